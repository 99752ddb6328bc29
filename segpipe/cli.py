"""The ``segpipe`` command (placeholder until the CLI lands)."""

import typer

app = typer.Typer(help="segpipe: segment whole archives of very large images.")


def main() -> None:
    app()
