"""Converters from published feature/annotation layouts into shards (``python -m grounding.data
convert FORMAT … ROOT``). One module per layout; each exposes ``convert(root, …)`` (Python API),
``HELP``, ``add_arguments(parser)`` and ``run(args, root, common)`` (CLI glue).

h5py is imported only inside the converters that read HDF5 (optional extra ``converters``).
"""

from __future__ import annotations

import importlib

from .common import ConversionError

# format name -> module (grounding.data.converters.<module>)
FORMATS: dict[str, str] = {
    "youcook2-bb": "youcook2_bb",
    "anet-entities": "anet_entities",
    "charades-sta": "charades",
    "charades-cd": "charades",
    "anet-captions": "anet_captions",
    "anet-cd": "anet_captions",
    "vidstg": "vidstg",
    "hc-stvg": "vidstg",
}


def module(fmt: str):
    try:
        name = FORMATS[fmt]
    except KeyError:
        raise ConversionError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}") from None
    return importlib.import_module(f"{__name__}.{name}")


__all__ = ["FORMATS", "ConversionError", "module"]
