"""Loading and saving models: built-in names, ``.safetensors`` / ``.pt`` files with cards.

Weights are never loaded by executing code: safetensors files are plain tensors, and
``.pt`` / ``.pth`` state dicts go through ``torch.load(weights_only=True)``, which refuses
pickles that would construct arbitrary objects (segpipe turns that refusal into a
:class:`~segpipe.errors.WeightsIntegrityError`).
"""

from __future__ import annotations

import functools
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from segpipe.errors import ModelError, WeightsIntegrityError
from segpipe.io import sha256_file
from segpipe.models._card import ModelCard
from segpipe.models._model import Model, resolve_device
from segpipe.models._registry import (
    BUILTIN_CARDS,
    build_module,
    builtin_card,
    builtin_paths,
    needs_weights,
    unknown_model_error,
)

__all__ = ["list_models", "load_model", "save_model", "sha256_file"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def list_models() -> list[ModelCard]:
    """Cards of the built-in models, sorted by name.

    A learned built-in whose weights are installed shows its installed card (with its
    sha256); one not yet installed shows its default card with ``sha256=None``
    (see :func:`segpipe.models.is_installed`).
    """
    return [builtin_card(name) for name in sorted(BUILTIN_CARDS)]


def load_model(name_or_path: str | Path | Model, device: str | torch.device | None = None) -> Model:
    """Load a built-in model by name, or a user's weights file with its card.

    Parameters
    ----------
    name_or_path : str, Path or Model
        A built-in name (:func:`list_models`), the path of a ``.safetensors`` / ``.pt`` /
        ``.pth`` state dict with ``<same name>.json`` (its :class:`ModelCard`) beside it,
        the path of that ``.json``, or a :class:`Model` (returned as is).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.

    Returns
    -------
    Model
        Cached per process, keyed by the resolved name or path (and file modification
        time) and device: loading the same model twice returns the same object.

    Raises
    ------
    ModelError
        Unknown name (the message lists the valid ones), missing card, built-in weights
        not installed, weights that do not fit the card's architecture.
    WeightsIntegrityError
        The weights' sha256 differs from the card's, or a pickle contains code.

    Examples
    --------
    >>> model = load_model("classical", device="cpu")
    >>> model.predict(np.zeros((2, 1, 32, 32), np.float32)).shape  # doctest: +SKIP
    (2, 1, 32, 32)
    """
    if isinstance(name_or_path, Model):
        return name_or_path
    dev = str(resolve_device(device))
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_CARDS:
        name = name_or_path
        card = BUILTIN_CARDS[name]
        if not needs_weights(card):
            return _load_cached("builtin", name, 0, dev)
        weights, card_path = builtin_paths(name)
        if not weights.exists() or not card_path.exists():
            missing = weights if not weights.exists() else card_path
            raise ModelError(
                f"built-in weights for {name!r} are not installed: {missing} is missing; "
                f"train them with `segpipe train` (segpipe.train) or pass a weights file with its card"
            )
        return _load_cached("file", str(weights.resolve()), weights.stat().st_mtime_ns, dev)
    weights = _weights_path(name_or_path)
    return _load_cached("file", str(weights.resolve()), weights.stat().st_mtime_ns, dev)


def _weights_path(name_or_path: str | Path) -> Path:
    if not isinstance(name_or_path, (str, Path)):
        raise ModelError(
            f"model must be a name, a path or a Model, got {type(name_or_path).__name__}"
        )
    path = Path(name_or_path).expanduser()
    if path.suffix == ".json":
        for suffix in WEIGHT_SUFFIXES:
            candidate = path.with_suffix(suffix)
            if candidate.exists():
                return candidate
        raise ModelError(
            f"{path}: no weights beside this card; expected {path.with_suffix('.safetensors').name} "
            "(or .pt / .pth) in the same folder"
        )
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ModelError(
                f"{path}: not a weights file; use .safetensors, .pt or .pth with a .json card"
            )
        return path
    if path.suffix in WEIGHT_SUFFIXES or path.parent != Path("."):
        raise ModelError(f"{path}: model file not found")
    raise unknown_model_error(str(name_or_path))


@functools.cache
def _load_cached(kind: str, key: str, mtime_ns: int, device: str) -> Model:
    if kind == "builtin":
        card = BUILTIN_CARDS[key]
        return Model(build_module(card), card, device)
    weights = Path(key)
    card_path = weights.with_suffix(".json")
    if not card_path.exists():
        raise ModelError(
            f"{weights}: its model card {card_path.name} is missing; save weights with "
            "segpipe.models.save_model, which writes both"
        )
    card = ModelCard.from_json(card_path)
    state = _read_state_dict(weights, card)
    try:
        module = build_module(card)
    except (ModelError, ValueError, TypeError, KeyError) as exc:  # the card's architecture
        detail = " ".join(str(exc).split())
        raise ModelError(f"{card_path}: cannot build the model it describes: {detail}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else ""
        raise ModelError(
            f"{weights}: the weights do not fit the architecture in {card_path.name} "
            f"({card.architecture}): {first}"
        ) from None
    return Model(module, card, device)


def _read_state_dict(weights: Path, card: ModelCard) -> Mapping[str, torch.Tensor]:
    state = _read_tensors(weights, card)
    if card.sha256 is None:  # after loading: a refused file gets its error alone
        warnings.warn(
            f"{weights}: its card has no sha256, the weights are not verified", stacklevel=3
        )
    return state


def _read_tensors(weights: Path, card: ModelCard) -> Mapping[str, torch.Tensor]:
    if card.sha256 is not None:
        actual = sha256_file(weights)
        if actual != card.sha256:
            raise WeightsIntegrityError(
                f"{weights}: sha256 {actual[:12]}… does not match the card's {card.sha256[:12]}…; "
                "the file is corrupt or not the one its card describes — save it again with save_model"
            )
    if weights.suffix == ".safetensors":
        try:
            return load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsIntegrityError(
                f"{weights}: not a readable safetensors file ({exc})"
            ) from None
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes: the error says it all
            warnings.simplefilter("ignore")
            obj: Any = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        with open(weights, "rb") as fh:
            head = fh.read(4)
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # neither torch's zip nor a pickle
            raise WeightsIntegrityError(f"{weights}: not a readable PyTorch state dict (not a torch file)") from None
        raise WeightsIntegrityError(
            f"{weights}: refused — the pickle contains code or objects, not only tensors "
            "(torch.load weights_only=True); re-save a plain state dict or use save_model (safetensors)"
        ) from None
    except Exception as exc:  # corrupt zip / truncated file: torch raises various types
        raise WeightsIntegrityError(
            f"{weights}: not a readable PyTorch state dict ({type(exc).__name__})"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{weights}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    return obj


def save_model(module: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (the card with the weights' sha256).

    Parameters
    ----------
    module : torch.nn.Module
        A network built by :func:`build_module` from ``card`` (checked: its state dict must
        load into a fresh ``build_module(card)``).
    card : ModelCard
        The model's card; its ``sha256`` is replaced by the written file's.
    path : str or Path
        Destination without suffix (a ``.safetensors`` / ``.json`` suffix is ignored).

    Returns
    -------
    Path
        The ``.safetensors`` file; :func:`load_model` accepts it.
    """
    base = Path(path).expanduser()
    if base.suffix in (*WEIGHT_SUFFIXES, ".json"):
        base = base.with_suffix("")
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    try:
        build_module(card).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"save_model: the module does not match the architecture of card {card.name!r} "
            f"({card.architecture}); build it with segpipe.models.build_module(card)"
        ) from exc
    base.parent.mkdir(parents=True, exist_ok=True)
    weights = base.parent / f"{base.name}.safetensors"
    card_path = base.parent / f"{base.name}.json"
    tmp = weights.parent / f".{weights.name}.tmp"
    save_file(state, str(tmp), metadata={"segpipe_model": card.name})
    sha = sha256_file(tmp)
    os.replace(tmp, weights)
    final = ModelCard(**{**card.model_dump(), "sha256": sha})
    tmp_card = card_path.parent / f".{card_path.name}.tmp"
    final.to_json(tmp_card)
    os.replace(tmp_card, card_path)
    return weights
