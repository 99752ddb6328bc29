"""The model card: everything segpipe needs to know to run a model, as validated JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segpipe.errors import ModelError

__all__ = ["ModelCard", "Normalisation", "n_outputs"]

Task = Literal["binary", "semantic", "instance"]
ChannelMode = Literal["grey", "rgb", "nuclear"]

#: Output channels of an instance model, in order. Three classes instead of a binary mask
#: because (a) touching objects are separated by the ``boundary`` class, so watershed can
#: grow objects from confident ``interior`` seeds, and (b) every channel is a local,
#: per-pixel quantity: tiles and chunks stitch seamlessly, unlike distance or flow maps
#: whose values depend on the whole object.
INSTANCE_OUTPUTS = ["background", "interior", "boundary"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Normalisation(BaseModel):
    """How prepared input is scaled: ``(x - p_low) / (p_high - p_low)`` per input channel.

    ``kind="otsu"``: ``p_low`` maps to 0 and the channel's Otsu threshold to 0.5 (a model
    with a fixed threshold at 0.5 then thresholds at Otsu's). The statistics are computed
    once per image from a low-resolution level (:func:`segpipe.normalize.image_stats`),
    never per tile.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["percentile", "otsu"] = "percentile"
    low: float = Field(1.0, ge=0.0, le=100.0, description="lower percentile, maps to 0")
    high: float = Field(99.8, ge=0.0, le=100.0, description="upper percentile, maps to 1")

    @model_validator(mode="after")
    def _ordered(self) -> Normalisation:
        if not self.low < self.high:
            raise ValueError(f"normalisation low ({self.low}) must be below high ({self.high})")
        return self


def n_outputs(task: str, classes: list[str]) -> int:
    """Number of output channels ``K`` a model of ``task`` with ``classes`` produces."""
    if task == "binary":
        return 1
    if task == "instance":
        return len(INSTANCE_OUTPUTS)
    return len(classes)


class ModelCard(BaseModel):
    """Description of a segmentation model, stored as ``<weights>.json`` beside its weights.

    Validated on construction; an invalid card raises :class:`segpipe.errors.ModelError`
    (a ``ValueError``) naming the field. Round-trips through JSON with
    :meth:`to_json` / :meth:`from_json` (or pydantic's ``model_dump_json`` /
    ``model_validate_json``).

    Attributes
    ----------
    name : str
        Model name (a built-in name, or any name for user models).
    task : {"binary", "semantic", "instance"}
        Binary: one sigmoid channel. Semantic: one softmax channel per class.
        Instance: softmax over ``background / interior / boundary``.
    classes : list of str
        Class names, ``classes[0]`` is the background.
    in_channels : int
        Channels of the model input (1 for ``grey`` / ``nuclear``, 3 for ``rgb``).
    channel_mode : {"grey", "rgb", "nuclear"}
        How a ``(C, Y, X)`` source becomes model input (:mod:`segpipe.normalize`).
    normalisation : Normalisation
        Percentile scaling of the model input.
    mpp : float or None
        Input pixel size (µm/px) the model was trained at; ``None`` accepts any.
    halo : int
        Context in pixels (at model resolution) needed on each side of a tile core.
    tile : int
        Tile size ``predict`` is run at, a multiple of 16; ``tile - 2 * halo`` is the tile
        core (the stride of the global tile grid) and must be a positive multiple of 16.
    outputs : list of str
        Meaning of the ``K`` output channels.
    postprocess : dict
        Parameters for :func:`segpipe.postprocess.to_labels`.
    architecture : dict
        Network description for :func:`segpipe.models.build_module`, with a ``type`` key.
    sha256 : str or None
        Hex sha256 of the weights file, checked on load.
    description : str
        One line for ``segpipe models``.
    training : dict or None
        How the weights were made (command, data, steps, validation metrics, tuned
        post-processing), written by :mod:`segpipe.train`; None when unknown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    task: Task
    classes: list[str] = Field(min_length=2)
    in_channels: int = Field(ge=1, le=64)
    channel_mode: ChannelMode
    normalisation: Normalisation = Field(default_factory=Normalisation)
    mpp: float | None = Field(default=None, gt=0.0)
    halo: int = Field(ge=0)
    tile: int = Field(ge=16)
    outputs: list[str]
    postprocess: dict[str, Any] = Field(default_factory=dict)
    architecture: dict[str, Any]
    sha256: str | None = None
    description: str = ""
    training: dict[str, Any] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ModelError(_one_line(exc, data.get("name"))) from None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value

    @field_validator("architecture")
    @classmethod
    def _has_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("type"), str):
            raise ValueError('needs a "type" key, e.g. {"type": "unet", "preset": "light"}')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.channel_mode == "rgb" and self.in_channels != 3:
            raise ValueError(f"channel_mode 'rgb' needs in_channels=3, got {self.in_channels}")
        if self.channel_mode in ("grey", "nuclear") and self.in_channels != 1:
            raise ValueError(
                f"channel_mode {self.channel_mode!r} needs in_channels=1, got {self.in_channels}"
            )
        k = n_outputs(self.task, self.classes)
        if len(self.outputs) != k:
            raise ValueError(f"a {self.task} model has {k} outputs, the card lists {self.outputs}")
        if self.task == "instance" and self.outputs != INSTANCE_OUTPUTS:
            raise ValueError(f"an instance model's outputs must be {INSTANCE_OUTPUTS}")
        if self.task == "binary" and len(self.classes) != 2:
            raise ValueError(
                f"a binary model has 2 classes (background, object), got {self.classes}"
            )
        if self.tile % 16:
            raise ValueError(f"tile ({self.tile}) must be a multiple of 16")
        core = self.tile - 2 * self.halo
        if core < 16 or core % 16:
            raise ValueError(
                f"tile - 2*halo ({core}) must be a positive multiple of 16; enlarge tile"
            )
        return self

    @property
    def n_outputs(self) -> int:
        """Number of output channels ``K``."""
        return n_outputs(self.task, self.classes)

    @property
    def stride(self) -> int:
        """Tile core size = stride of the global tile grid (``tile - 2 * halo``)."""
        return self.tile - 2 * self.halo

    def to_json(self, path: str | Path | None = None) -> str:
        """Return the card as indented JSON; also write it to ``path`` when given."""
        text = self.model_dump_json(indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> ModelCard:
        """Read a card from a ``.json`` path (or a JSON string starting with ``{``)."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text, where = source, "model card"
        else:
            where = str(source)
            try:
                text = Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise ModelError(f"{where}: cannot read the model card ({exc.strerror})") from None
            except UnicodeDecodeError:
                raise ModelError(f"{where}: the model card is not UTF-8 text (JSON)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{where}: a model card is a JSON object")
        try:
            return cls(**data)
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None


def _one_line(exc: ValidationError, name: object) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    who = f"model card {name!r}" if isinstance(name, str) else "model card"
    return f"invalid {who}: {loc + ': ' if loc else ''}{msg}{more}"
