"""segpipe — segment whole archives of very large images into masks and tables.

The public Python API::

    import segpipe
    model = segpipe.load_model("nuclei")          # .predict(N×C×H×W) -> N×K×H×W, .module, .card
    labels = segpipe.segment_array(image, model="nuclei")
    con = segpipe.open_results("results/")       # DuckDB: regions, images, runs views

Heavy modules (torch, dask, duckdb) are imported on first use, so ``import segpipe`` is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "list_models", "segment_array", "open_results", "open_image"]

_LAZY = {
    "load_model": "segpipe.models",
    "list_models": "segpipe.models",
    "segment_array": "segpipe.predict",
    "open_results": "segpipe.tables",
    "open_image": "segpipe.io",
}

if TYPE_CHECKING:  # pragma: no cover
    from segpipe.io import open_image
    from segpipe.models import list_models, load_model
    from segpipe.predict import segment_array
    from segpipe.tables import open_results


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segpipe' has no attribute {name!r}")
    return getattr(import_module(module), name)
