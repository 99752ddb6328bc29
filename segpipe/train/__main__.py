"""``python -m segpipe.train``: train a model from the command line.

Examples::

    python -m segpipe.train --preset nuclei --out segpipe/models/weights/nuclei
    python -m segpipe.train --data my_images/ --task semantic --classes background,tumour \\
        --out my_model --steps 3000
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from segpipe.errors import ConfigError, SegpipeError
from segpipe.train._config import PRESETS, TrainConfig, preset_config
from segpipe.train._loop import train

_OPTIONS: dict[str, type] = {
    "name": str, "data": str, "val_data": str, "masks": str, "task": str, "label_name": str,
    "channel_mode": str, "mpp": float, "preset": str, "crop": int, "batch_size": int,
    "steps": int, "epoch_steps": int, "lr": float, "boundary": str, "seed": int, "device": str,
    "patience": int, "threads": int, "pool": int, "val_images": int, "checkpoint": str,
    "init": str, "balance": str, "balanced": float, "intensity": str, "synthetic_shape": int,
    "context_truncate": float, "select": str,
}
#: options given as comma-separated lists of numbers
_LISTS: tuple[str, ...] = ("context", "class_weights")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from command-line arguments."""
    p = argparse.ArgumentParser(prog="python -m segpipe.train", description="Train a segpipe U-Net.")
    p.add_argument("--recipe", "--builtin", dest="recipe", choices=sorted(PRESETS),
                   help="start from a built-in recipe (nuclei, defects)")
    p.add_argument("--out", required=True, help="weights path (the card is written beside it)")
    for name, typ in _OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    for name in _LISTS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       help="comma-separated numbers")
    p.add_argument("--classes", default=None, help="comma-separated class names, background first")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--tune-only", action="store_true",
                   help="only re-tune the post-processing of the model saved at --out on the validation set")
    args = p.parse_args(argv)
    over: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None and k not in ("recipe", "tune_only")}
    for name in _LISTS:
        if name in over:
            try:
                over[name] = [float(v) for v in str(over[name]).split(",") if v.strip()]
            except ValueError:
                raise ConfigError(f"--{name.replace('_', '-')} {over[name]!r}: give comma-separated numbers") from None
    if args.classes:
        over["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    # `--preset nuclei` names a recipe; `--preset light` a U-Net size
    if over.get("preset") in PRESETS:
        args.recipe = over.pop("preset")
    over["command"] = "python -m segpipe.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return preset_config(args.recipe, **over) if args.recipe else TrainConfig(**over)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        cfg = parse_args(argv)
        if "--tune-only" in (argv if argv is not None else sys.argv[1:]):
            from segpipe.train._tune import retune_saved

            print(json.dumps(retune_saved(cfg), indent=2))
            return 0
        result = train(cfg)
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"weights": str(result.weights), "card": str(result.card), "steps": result.steps,
                      "stopped_early": result.stopped_early, "metrics": result.best_metrics}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
