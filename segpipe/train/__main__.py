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
from types import UnionType
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic_core import PydanticUndefined

from segpipe.errors import ConfigError, SegpipeError
from segpipe.train._config import PRESETS, TrainConfig, preset_config
from segpipe.train._loop import train

#: fields the parser handles itself (or that the command sets)
_SPECIAL = ("out", "classes", "command", "preset")


def _kind(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """(base type, Literal choices) of a field's annotation, ``X | None`` unwrapped."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]
    if get_origin(annotation) is Literal:
        return str, get_args(annotation)
    return annotation, ()


def _add_field(p: argparse.ArgumentParser, name: str) -> None:
    field = TrainConfig.model_fields[name]
    flag = "--" + name.replace("_", "-")
    text = field.description or ""
    default = field.default
    base, choices = _kind(field.annotation)
    if base is bool:
        if default:
            p.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false", default=None,
                           help=f"turn off {text}")
        else:
            p.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        return
    if default is not None and default is not PydanticUndefined:
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        text = f"{text} (default {shown})" if text else f"default {shown}"
    if get_origin(base) in (list, tuple):
        p.add_argument(flag, dest=name, type=_numbers, default=None, metavar="A,B,...", help=f"{text}; comma-separated")
    elif choices:
        p.add_argument(flag, dest=name, default=None, choices=choices, help=text)
    else:
        typ = base if base in (int, float) else str
        p.add_argument(flag, dest=name, type=typ, default=None, help=text)


def _numbers(value: str) -> list[float]:
    """An option's comma-separated numbers (argparse ``type``)."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give comma-separated numbers") from None


class _Parser(argparse.ArgumentParser):
    """Usage problems as one-line :class:`ConfigError` (``--help`` still prints and exits)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def parse_args(argv: list[str] | None = None, prog: str = "python -m segpipe.train") -> TrainConfig:
    """A :class:`TrainConfig` from command-line arguments (every field of it is an option).

    A usage problem (unknown option, bad choice) raises :class:`ConfigError`, one line.
    """
    p = _Parser(
        prog=prog,
        description="Train a segpipe U-Net and write its weights and model card.",
        epilog="A recipe (--preset nuclei or defects; segpipe.train.PRESETS) sets its own values "
        "for many options; options given on the command line override them. "
        "The shipped weights' commands are in docs/models.md.",
    )
    p.add_argument("--recipe", "--builtin", dest="recipe", choices=sorted(PRESETS),
                   help="start from a built-in recipe (same as --preset nuclei / defects)")
    p.add_argument("--preset", dest="preset", default=None,
                   choices=sorted(PRESETS) + list(_kind(TrainConfig.model_fields["preset"].annotation)[1]),
                   help="a built-in recipe (nuclei, defects) or a U-Net size (tiny, light, classic; default light)")
    p.add_argument("--out", required=True, help="weights path (the card is written beside it)")
    p.add_argument("--classes", default=None, help="comma-separated class names, background first")
    for name in TrainConfig.model_fields:
        if name not in _SPECIAL:
            _add_field(p, name)
    p.add_argument("--tune-only", action="store_true",
                   help="only re-tune the post-processing of the model saved at --out on the validation set")
    args = p.parse_args(argv)
    over: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None and k not in ("recipe", "tune_only")}
    if args.classes:
        over["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    # `--preset nuclei` names a recipe; `--preset light` a U-Net size
    if over.get("preset") in PRESETS:
        args.recipe = over.pop("preset")
    over["command"] = f"{prog} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
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
