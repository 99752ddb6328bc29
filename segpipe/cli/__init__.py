"""The ``segpipe`` command (typer): ``main()`` is the console entry point."""

from segpipe.cli._app import app, main

__all__ = ["app", "main"]
