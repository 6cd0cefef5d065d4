"""rsz_infer: zero-shot labeling and text retrieval of remote-sensing tiles, without PyTorch.

The Python API (the CLI and the Ray path are thin shells over the same objects):

    from rsz_infer import Labeler, Index
    with Labeler("models/default", ["airport", "river: a river crossing farmland"]) as labeler:
        records = labeler.label(images)          # HxWx3 uint8 arrays, paths (files, folders, scenes), Tiles
        table = labeler.label_table(images)      # pyarrow Table; .to_pandas() for a DataFrame
        embeddings = labeler.embed(images)       # [N, D] image embeddings
    hits = Index.open("idx/").search(text="a river crossing farmland", k=10)

Names are imported on first use, so `import rsz_infer.errors` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Labeler": "rsz_infer.api",
    "Embedder": "rsz_infer.api",
    "class_entries": "rsz_infer.api",
    "records_table": "rsz_infer.api",
    "Index": "rsz_infer.index",
    "Hit": "rsz_infer.index",
    "ClassEntry": "rsz_infer.classfile",
    "RszError": "rsz_infer.errors",
    "Tile": "rsz_infer.images",
    "TileOptions": "rsz_infer.images",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rsz_infer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    # the lazy names too: a notebook's tab completion (rsz_infer.<Tab>) lists what dir() gives
    return sorted(set(globals()) | set(__all__))
