"""Load pickles from published datasets without running their code.

A pickle can name any importable callable and call it while loading (``os.system`` included), so
the annotation pickles shipped with published code (NAFAE's ``*_entities.pkl``, CPL's
``glove.pkl``) are read through :class:`RestrictedUnpickler`, which resolves only an allow-list
of globals and refuses everything else with :class:`UnsafePickleError` naming the global:

* always: nothing beyond the plain types that pickle builds itself (``dict``, ``list``,
  ``tuple``, ``set``, ``frozenset``, ``str``, ``bytes``, ``bytearray``, ``int``, ``float``,
  ``complex``, ``bool``, ``None``), plus the same builtins when a pickle names them as globals;
* ``allow_numpy=True``: numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray.scalar``, and
  ``_codecs.encode`` with a latin-1 codec, which protocol-2 pickles use for raw bytes), arrays of
  Python objects excluded;
* ``allow_counter=True``: ``collections.Counter`` and ``collections.OrderedDict`` (dict
  subclasses that CPL's vocabulary pickles use).

Python-2 era pickles (NAFAE) need ``encoding="latin1"``: :func:`load` passes it by default.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import os
import pickle
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load", "loads"]

_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
             "float", "complex", "bool"}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (the message names it)."""


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} is not allowed (latin-1 only)")
    return codecs.encode(obj, "latin1", errors)


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, allow_numpy: bool = False, allow_counter: bool = False,
                 where: str = "pickle", **kwargs):
        super().__init__(file, **kwargs)
        self.allow_numpy = allow_numpy
        self.allow_counter = allow_counter
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if self.allow_counter and module == "collections" and name in ("Counter", "OrderedDict"):
            return getattr(collections, name)
        if self.allow_numpy:
            if module in _NUMPY_MODULES and name == "_reconstruct":
                return _numpy_reconstruct
            if module in _NUMPY_MODULES and name == "scalar":
                return _numpy_scalar
            if module == "numpy" and name == "ndarray":
                return np.ndarray
            if module == "numpy" and name == "dtype":
                return _numpy_dtype
            if module == "_codecs" and name == "encode":
                return _latin1_encode
        allowed = "plain builtins"
        if self.allow_numpy:
            allowed += ", numpy arrays"
        if self.allow_counter:
            allowed += ", collections.Counter/OrderedDict"
        raise UnsafePickleError(
            f"{self.where}: refusing to load global {module}.{name} (allowed: {allowed}); "
            f"the file may run code when unpickled"
        )


def _multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # numpy 1.x: the module numpy 2 renamed
    return multiarray


def _numpy_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise UnsafePickleError("numpy arrays of Python objects are not allowed")
    return dt


def _numpy_reconstruct(cls, *args):
    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy _reconstruct of {cls!r} is not allowed (ndarray only)")
    return _multiarray()._reconstruct(cls, *args)


def _numpy_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy scalars of Python objects are not allowed")
    return _multiarray().scalar(dtype, *args)


def loads(data: bytes, *, allow_numpy: bool = False, allow_counter: bool = False,
          encoding: str = "latin1", where: str = "pickle") -> Any:
    return RestrictedUnpickler(io.BytesIO(data), allow_numpy=allow_numpy, allow_counter=allow_counter,
                               encoding=encoding, where=where).load()


def load(path: str | os.PathLike, *, allow_numpy: bool = False, allow_counter: bool = False,
         encoding: str = "latin1") -> Any:
    """Unpickle ``path`` through the allow-list (``encoding="latin1"`` reads Python-2 pickles)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, allow_numpy=allow_numpy, allow_counter=allow_counter,
                                   encoding=encoding, where=str(path)).load()
