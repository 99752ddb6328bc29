"""Training configuration (validated) and the built-in recipes ``nuclei`` and ``defects``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segpipe.errors import ConfigError

__all__ = ["TrainConfig", "TrainResult", "PRESETS", "preset_config"]


class TrainConfig(BaseModel):
    """Everything one training run needs; validated on construction.

    An invalid value raises :class:`segpipe.errors.ConfigError` (a ``ValueError``) naming
    the field. ``data`` is a folder of image/mask pairs, an ``.ome.zarr`` image with
    ``labels/``, a folder of such images, or ``synthetic:nuclei`` / ``synthetic:defects``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("custom", min_length=1, description="model name written to the card")
    out: Path = Field(Path("model.safetensors"), description="weights path; the card is <out>.json")
    data: str = Field(description="training data: folder, .ome.zarr, or synthetic:<kind>")
    val_data: str | None = Field(None, description="validation data; default: split off `data`")
    masks: str | None = Field(None, description="mask tree mirroring data: <relpath>.labels.tif")
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="share of images held out")
    task: Literal["instance", "semantic"] = Field(
        "instance", description="instance: objects (background / interior / boundary); semantic: a class per pixel"
    )
    classes: list[str] | None = Field(None, description="class names, [0] = background")
    label_name: str | None = Field(None, description="OME-Zarr labels/<name> to train on")
    channel_mode: Literal["grey", "rgb", "nuclear"] = Field(
        "grey", description="network input: grey (1 channel), rgb (3), nuclear (the nuclear stain of H&E or the "
        "first fluorescence channel)"
    )
    mpp: float | None = Field(None, gt=0.0, description="model input µm/px (default: any, no resampling)")
    preset: Literal["tiny", "light", "classic"] = Field("light", description="U-Net preset")
    widths: list[int] | None = Field(
        None, description="U-Net feature widths per level (last = bottleneck); overrides preset"
    )
    context: list[float] | None = Field(
        None, description="U-Net fixed difference-of-Gaussians input bands: increasing sigmas (px)"
    )
    context_truncate: float = Field(3.0, ge=1.0, le=4.0, description="context blur radius in sigmas")
    crop: int = Field(160, ge=32, le=1024, description="training crop size (multiple of 16)")
    batch_size: int = Field(8, ge=1, le=512, description="crops per optimizer step")
    steps: int = Field(2000, ge=1, description="optimizer steps in total")
    epoch_steps: int = Field(100, ge=1, description="steps between validations / checkpoints")
    lr: float = Field(3e-3, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    schedule: Literal["onecycle", "cosine"] = Field("onecycle", description="learning-rate schedule")
    dice_weight: float = Field(1.0, ge=0.0, description="weight of the soft Dice loss")
    class_weights: list[float] | None = Field(None, description="cross-entropy weight per class (default: from the data)")
    boundary: Literal["inner", "thick"] = Field("inner", description="boundary target width")
    scale_range: tuple[float, float] = Field((0.7, 1.4), description="zoom augmentation range")
    augment: bool = Field(True, description="augmentation (flips, 90° rotations, zoom, elastic, intensity)")
    intensity: Literal["strong", "mild"] = Field(
        "strong",
        description="intensity augmentation: 'strong' (contrast x0.4-1.6, noise up to 0.12) or "
        "'mild' (contrast x0.8-1.25, no added noise; for faint features)",
    )
    stain_jitter: bool = Field(True, description="H&E stain jitter in optical-density space")
    balanced: float = Field(0.5, ge=0.0, le=1.0, description="share of class-balanced crops")
    balance: Literal["item", "class"] = Field(
        "item",
        description="semantic only: 'item' centres a balanced crop on a class drawn among the "
        "classes of a random image; 'class' draws the class first (uniformly over the "
        "foreground classes of the whole pool), then an image holding it",
    )
    pool: int = Field(48, ge=1, description="synthetic images per epoch (a fresh set every epoch)")
    synthetic_shape: int = Field(256, ge=64, description="side of generated synthetic images")
    val_images: int = Field(8, ge=1, description="synthetic validation images")
    select: Literal["miou_fg", "miou"] = Field(
        "miou_fg",
        description="semantic: validation score picking the saved weights: mean IoU of the "
        "foreground classes, or of all classes (background too: penalises flooding a class)",
    )
    patience: int = Field(6, ge=1, description="epochs without improvement before stopping")
    seed: int = Field(0, description="seed of weights, batches and synthetic data (same seed, same run)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    amp: bool = Field(True, description="bf16 autocast on CUDA")
    threads: int = Field(1, ge=1, description="torch CPU threads")
    loader_threads: int | None = Field(
        None, ge=0, description="threads making batches ahead of the model (same batches as "
        "without them); default 0 on the CPU, up to 8 on CUDA, where making batches is the "
        "bottleneck"
    )
    checkpoint: Path | None = Field(None, description="checkpoint file; default <out>.ckpt")
    resume: bool = Field(False, description="continue from the checkpoint")
    init: Path | None = Field(None, description="start from these weights (fine-tuning), e.g. a built-in model's")
    stop_after: int | None = Field(
        None, ge=1, description="leave after this many steps in this call (checkpointed; finish with resume)"
    )
    tune_postprocess: bool = Field(True, description="tuning the post-processing thresholds on the validation set (instance models)")
    command: str | None = Field(None, description="command line recorded in the card")
    progress: bool = Field(True, description="the progress bar with loss and metrics")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "config"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"invalid training option {loc}: {msg}") from None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.crop % 16:
            raise ValueError(f"crop ({self.crop}) must be a multiple of 16")
        if self.widths is not None and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ValueError(f"widths {self.widths} need at least two positive levels")
        if self.context is not None and (
            len(self.context) < 2 or min(self.context) <= 0 or self.context != sorted(set(self.context))
        ):
            raise ValueError(f"context {self.context} needs at least two increasing positive sigmas")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range {self.scale_range} must be 0 < low <= high")
        if self.task == "semantic" and (self.classes is None or len(self.classes) < 2):
            raise ValueError("a semantic model needs classes (at least background and one class)")
        if self.class_weights is not None and len(self.class_weights) != len(self.target_classes):
            raise ValueError(
                f"class_weights has {len(self.class_weights)} values for "
                f"{len(self.target_classes)} target classes {self.target_classes}"
            )
        return self

    @property
    def target_classes(self) -> list[str]:
        """Names of the network's output channels."""
        if self.task == "instance":
            return ["background", "interior", "boundary"]
        assert self.classes is not None
        return list(self.classes)

    @property
    def architecture(self) -> dict[str, Any]:
        """The card's ``architecture``: the preset, or explicit ``widths`` when given
        (plus ``context`` when set)."""
        if self.widths is not None:
            arch: dict[str, Any] = {"type": "unet", "widths": list(self.widths), "batch_norm": True}
        else:
            arch = {"type": "unet", "preset": self.preset, "batch_norm": True}
        if self.context is not None:
            arch["context"] = [float(s) for s in self.context]
            arch["context_truncate"] = float(self.context_truncate)
        return arch

    @property
    def in_channels(self) -> int:
        return 3 if self.channel_mode == "rgb" else 1

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint is not None:
            return self.checkpoint
        base = self.out.with_suffix("") if self.out.suffix in (".safetensors", ".pt", ".pth", ".json") else self.out
        return Path(str(base) + ".ckpt")


#: Built-in recipes: ``preset_config("nuclei", out=...)`` gives the exact configuration the
#: shipped weights were trained with (overrides for quick runs are allowed). ``defects`` is
#: stage 1 of the shipped defects weights; stage 2 fine-tunes them with coarse-context input
#: bands (``context``; command in docs/models.md, "Coarse context").
PRESETS: dict[str, dict[str, Any]] = {
    "nuclei": dict(
        name="nuclei",
        data="synthetic:nuclei",
        task="instance",
        classes=["background", "nucleus"],
        channel_mode="nuclear",
        mpp=0.5,
        preset="light",
        crop=128,
        batch_size=32,
        steps=5200,  # the shipped weights (2026-11-26, on a GPU): best validation at step 3600
        epoch_steps=400,
        lr=3e-3,
        scale_range=(0.75, 1.35),
        synthetic_shape=256,
        pool=128,
        val_images=16,
        patience=100,  # no early stop: validation AP jumps by a few points from epoch to epoch
        seed=5,
    ),
    "defects": dict(
        name="defects",
        data="synthetic:defects",
        task="semantic",
        classes=["background", "scratch", "pit", "stain"],
        channel_mode="grey",
        mpp=None,
        preset="light",
        crop=128,
        batch_size=8,
        steps=1200,
        epoch_steps=100,
        lr=3e-3,
        scale_range=(0.8, 1.25),
        stain_jitter=False,
        synthetic_shape=256,
        pool=48,
        val_images=6,
        patience=6,
    ),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The built-in recipe ``name`` (``nuclei`` or ``defects``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; choose one of {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


@dataclass
class TrainResult:
    """What :func:`segpipe.train.train` produced.

    Attributes
    ----------
    weights : Path
        The safetensors file (its card is ``weights.with_suffix(".json")``).
    card : Path
        The model card JSON.
    steps : int
        Optimizer steps done in total (including resumed ones).
    best_metrics : dict
        Validation metrics of the saved (best) weights.
    history : list of dict
        One entry per epoch: step, train_loss, val_loss and validation metrics.
    stopped_early : bool
        True when validation stopped improving for ``patience`` epochs.
    """

    weights: Path
    card: Path
    steps: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
