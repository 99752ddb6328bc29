"""Settings: the only module that reads configuration files and the environment.

Precedence, lowest first: built-in defaults < config file (TOML or YAML) <
environment (``SEGPIPE_<STAGE>__<FIELD>``, e.g. ``SEGPIPE_INFER__BATCH=4``; and
``SEGPIPE_DASK_ADDRESS`` for the cluster) < explicit overrides (the CLI's options).

A config file looks like::

    [ingest]
    chunk = 512
    [infer]
    model = "classical"
    batch = 4
    [run]
    exclude = ["*/scratch/*"]
    concurrency = 2

Every problem (unknown key, wrong type, out-of-range value) is reported as one
:class:`~segpipe.errors.ConfigError` line naming the file (or environment variable) and
the key, before any work starts. Secrets never live here: S3 credentials come from the
standard AWS environment / profile chain only.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from segpipe.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from segpipe.ingest import IngestSpec

__all__ = [
    "IngestSettings",
    "TissueSettings",
    "InferSettings",
    "RunSettings",
    "SegpipeConfig",
    "load_config",
    "config_hash",
    "results_settings",
    "ENV_PREFIX",
    "debug_enabled",
]

ENV_PREFIX = "SEGPIPE_"
DASK_ADDRESS_ENV = "SEGPIPE_DASK_ADDRESS"

# Fields marked with this extra do not change results: they are left out of config_hash.
_NO_RESULT = {"affects_results": False}


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class IngestSettings(_Stage):
    """How a source image becomes an OME-Zarr multiscale image."""

    chunk: int = Field(1024, ge=64, le=16384, multiple_of=16, description="Chunk side (pixels) of the OME-Zarr arrays; also the unit of segmentation work.")
    shard: int | None = Field(None, ge=64, description="Shard side (pixels, a multiple of chunk); None writes unsharded arrays.")
    compression: Literal["zstd", "blosc", "none"] = Field("zstd", description="Codec of the OME-Zarr chunks.")
    min_size: int = Field(1024, ge=16, description="Stop adding pyramid levels once the long side is at most this many pixels.")
    mpp: float | None = Field(None, gt=0, description="Pixel size (µm/px) of every source image, instead of what the files state: for archives whose files lack it or state a wrong one. None: the files' own.")

    @field_validator("shard")
    @classmethod
    def _shard_multiple(cls, shard: int | None, info: Any) -> int | None:
        chunk = info.data.get("chunk")
        if shard is not None and chunk and shard % chunk:
            raise ValueError(f"shard ({shard}) must be a multiple of chunk ({chunk})")
        return shard


class TissueSettings(_Stage):
    """Foreground (tissue) detection on a low-resolution level."""

    enabled: bool = Field(True, description="Skip chunks outside the foreground mask (never read nor predicted).")


class InferSettings(_Stage):
    """Segmentation of the image chunks on the Dask cluster."""

    model: str = Field("nuclei", min_length=1, description="Built-in model name or path to a weights file with its card.")
    batch: int = Field(8, ge=1, le=1024, description="Tiles per model call.", json_schema_extra=_NO_RESULT)
    halo: int | None = Field(None, ge=0, le=4096, description="Context pixels around each chunk; None uses the model card's halo.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="Torch device on the workers: auto, cpu, cuda, cuda:N or mps.", json_schema_extra=_NO_RESULT)


class RunSettings(_Stage):
    """How an archive run is carried out (none of these change the results)."""

    include: list[str] = Field(default_factory=list, description="Glob patterns (on paths relative to the source) of images to process; empty = every supported image.", json_schema_extra=_NO_RESULT)
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of images to leave out.", json_schema_extra=_NO_RESULT)
    concurrency: int = Field(2, ge=1, le=256, description="Large images processed at once (their chunks share the Dask cluster); small images (≤ 4 blocks) run one per Dask worker thread.", json_schema_extra=_NO_RESULT)
    content_hash: bool = Field(False, description="Fingerprint images by content hash instead of size + modification time.", json_schema_extra=_NO_RESULT)
    cluster: str | None = Field(None, description="Dask scheduler address (tcp://host:8786); None starts a LocalCluster.", json_schema_extra=_NO_RESULT)
    n_workers: int | None = Field(None, ge=1, le=256, description="Worker processes of the LocalCluster segpipe starts when no cluster is given; None sizes it to the machine (with GPUs: one single-threaded worker per 2 cores per card, at most one per 4 GiB of the card; else one single-threaded worker per core).", json_schema_extra=_NO_RESULT)
    threads_per_worker: int | None = Field(None, ge=1, le=256, description="Threads per LocalCluster worker; None picks it with n_workers.", json_schema_extra=_NO_RESULT)
    retries: int = Field(2, ge=0, le=20, description="Retries of a stage after a transient error (S3, OSError, lost worker).", json_schema_extra=_NO_RESULT)
    retry_delay_s: float = Field(5.0, ge=0, le=3600, description="Seconds between retries.", json_schema_extra=_NO_RESULT)
    lease_s: float = Field(60.0, ge=5, le=86400, description="Lease of the results lock; renewed every third of it while the run lives.", json_schema_extra=_NO_RESULT)


_FILE_DATA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("_FILE_DATA", default=None)


class _DictSource(PydanticBaseSettingsSource):
    """A settings source holding the already-parsed config file."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class SegpipeConfig(BaseSettings):
    """All segpipe settings, one section per stage.

    Build it with :func:`load_config`, which layers file, environment and overrides and
    turns any validation problem into a one-line :class:`ConfigError`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Source image → OME-Zarr.")
    tissue: TissueSettings = Field(default_factory=TissueSettings, description="Foreground mask.")
    infer: InferSettings = Field(default_factory=InferSettings, description="Chunk-wise segmentation.")
    run: RunSettings = Field(default_factory=RunSettings, description="Archive run behaviour.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _DictSource(settings_cls, _FILE_DATA.get() or {})

    # -- specs: settings become the frozen dataclasses the core functions take ------------
    def ingest_spec(self) -> IngestSpec:
        """The :class:`segpipe.ingest.IngestSpec` of these settings."""
        from segpipe.ingest import IngestSpec

        s = self.ingest
        return IngestSpec(chunk=s.chunk, shard=s.shard, compression=s.compression, min_size=s.min_size, mpp=s.mpp)


def _read_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing .toml or .yaml file")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: unknown config format {suffix!r}; use .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping of stages (ingest, tissue, infer, run)")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _has_path(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _valid_keys(loc: tuple[Any, ...]) -> str:
    model: Any = SegpipeConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    return ", ".join(model.model_fields)


def _describe(err: dict[str, Any], path: str | None, file_data: dict[str, Any], overrides: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, str))
    key = ".".join(loc)
    if _has_path(overrides, loc) or (loc and _has_path(overrides, loc[:1]) and err["type"] != "extra_forbidden" and not _has_path(file_data, loc)):
        where = "option"
    elif _has_path(file_data, loc):
        where = path or "config"
    else:
        where = "environment " + ENV_PREFIX + "__".join(p.upper() for p in loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc)
        hint = f" (valid keys here: {valid})" if valid else ""
        return f"{where}: unknown key {key!r}{hint}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    msg = err["msg"].replace("Value error, ", "")
    return f"{where}: {key}: {msg}{shown}"


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> SegpipeConfig:
    """Load and validate the settings.

    Parameters
    ----------
    path : str or None
        A ``.toml``, ``.yaml`` or ``.yml`` file; None uses defaults and environment only.
    overrides : dict or None
        Highest-priority values, nested by stage (``{"infer": {"batch": 4}}``) or dotted
        (``{"infer.batch": 4}``); ``None`` values are ignored (an unset CLI option).

    Returns
    -------
    SegpipeConfig

    Raises
    ------
    ConfigError
        One line naming the file / environment variable / option, the key and the problem.

    Examples
    --------
    >>> load_config(None, {"infer.batch": 4}).infer.batch
    4
    """
    file_data = _read_file(os.fspath(path)) if path is not None else {}
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict):
            nested = _deep_merge(nested, {key: {k: v for k, v in value.items() if v is not None}})
            continue
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    base = file_data
    address = os.environ.get(DASK_ADDRESS_ENV)
    if address:  # the documented short form; SEGPIPE_RUN__CLUSTER and --cluster still win
        base = _deep_merge(file_data, {"run": {"cluster": address}})
    token = _FILE_DATA.set(base)
    try:
        return SegpipeConfig(**nested)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        line = _describe(dict(first), os.fspath(path) if path is not None else None, file_data, nested)
        if more:
            line += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(line) from None
    finally:
        _FILE_DATA.reset(token)


def _result_fields(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("affects_results") is False:
            continue
        value = getattr(model, name)
        out[name] = _result_fields(value) if isinstance(value, BaseModel) else value
    return out


def results_settings(config: SegpipeConfig) -> dict[str, Any]:
    """The settings that change results (what :func:`config_hash` covers), as plain data.

    The model is left out: runs record it (and its weights' sha256) separately.
    """
    data = _result_fields(config)
    data["infer"].pop("model", None)
    if data["ingest"].get("mpp") is None:  # unset: results made before the setting keep their hash
        data["ingest"].pop("mpp", None)
    data["run"] = {k: v for k, v in data.get("run", {}).items()}
    if not data["run"]:
        data.pop("run")
    return data


def config_hash(config: SegpipeConfig) -> str:
    """A short stable hash of the settings that change results.

    Concurrency, cluster address, batch size, device, retries … are left out, so changing
    them does not make a rerun reprocess the archive.

    Examples
    --------
    >>> config_hash(load_config(None, {"run.concurrency": 8})) == config_hash(load_config())
    True
    """
    blob = json.dumps(results_settings(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def debug_enabled() -> bool:
    """Whether ``SEGPIPE_DEBUG`` asks for full tracebacks instead of one-line errors."""
    return os.environ.get("SEGPIPE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
