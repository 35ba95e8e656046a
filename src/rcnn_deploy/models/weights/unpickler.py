"""The restricted unpickler for Detectron2 ``.pkl`` weight files: it rebuilds numpy arrays and plain
containers and refuses every other global, so nothing in a file can execute.

Security-critical, and nothing else lives here: the allowed globals are :func:`_safe_globals`, each numpy
callable checks the sizes it is asked for against the file's size (an array is never larger than the file it
comes from), and array state is checked before numpy reads it. Callers first check the pickle's declared
lengths against the file (``structure.scan_pickle``), so nothing huge is allocated either.
"""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any, Dict, Optional, Tuple

import numpy as np

_ALLOWED_KINDS = "biufc"  # numpy dtype kinds a weight file may hold (no objects, strings, structured types)


class RefusedGlobal(pickle.UnpicklingError):
    """The file references a global that is not allowed; ``qualified`` names it (``module.name``)."""

    def __init__(self, module: str, name: str) -> None:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class _NdarrayType:
    """What ``numpy.ndarray`` resolves to in a .pkl: only the subtype argument of ``_reconstruct`` (calling it
    directly would allocate any shape the file asks for)."""

    def __init__(self, *args: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray called directly")


class _CheckedArray(np.ndarray):
    """An ndarray whose pickled state is checked before numpy uses it (dtype kind, shape, data length)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        dtype = _clean_dtype(dtype)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape) or len(shape) > 16:
            raise pickle.UnpicklingError(f"malformed numpy array shape {str(shape)[:60]}")
        if isinstance(raw, str):  # Python 2 pickles: a str read with encoding="latin1", as numpy takes it
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy array data is not raw bytes")
        need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if need != len(raw):
            raise pickle.UnpicklingError(f"numpy array declares {need} bytes of data but holds {len(raw)}")
        # numpy's stub wants np.bool and bytes; ndarray.__setstate__ takes a Python bool and a bytearray too
        super().__setstate__((1, shape, dtype, bool(fortran), raw))  # type: ignore[arg-type]


def _clean_dtype(d: Any) -> np.dtype:
    if not isinstance(d, np.dtype) or d.kind not in _ALLOWED_KINDS or d.fields is not None or d.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {str(d)[:40]} is not a plain numeric type")
    return np.dtype(d.str)  # a fresh canonical dtype (a pickled dtype's state can be edited)


class _SafeNumpy:
    """The numpy callables a .pkl may use, each checking its declared sizes against the file's size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def dtype(self, obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
        if not isinstance(obj, str) or len(obj) > 8:
            raise pickle.UnpicklingError(f"numpy dtype {str(obj)[:40]!r} is not a plain numeric type")
        try:  # always a copy: the pickle's BUILD then edits it, never numpy's shared builtin dtype
            d = np.dtype(obj, False, True)
        except TypeError as e:
            raise pickle.UnpicklingError(f"numpy dtype {obj!r}: {e}") from None
        _clean_dtype(d)
        return d

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NdarrayType:
            raise pickle.UnpicklingError("numpy _reconstruct of something other than ndarray")
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise pickle.UnpicklingError(f"malformed numpy array shape {str(shape)[:60]}")
        if float(np.prod(shape, dtype=np.float64)) > self.limit:
            raise pickle.UnpicklingError(f"numpy array of shape {shape} is larger than the file")
        return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        d = _clean_dtype(dtype)
        if isinstance(data, str):  # Python 2 pickles
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != d.itemsize:
            raise pickle.UnpicklingError("malformed numpy scalar")
        return np.frombuffer(data, dtype=d)[0].copy()

    def frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        d = _clean_dtype(dtype)
        if not isinstance(buf, (bytes, bytearray)) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("malformed numpy buffer")
        if int(np.prod(shape, dtype=np.float64)) * d.itemsize != len(buf):
            raise pickle.UnpicklingError("numpy buffer size does not match its shape")
        return np.frombuffer(buf, dtype=d).reshape(shape, order="F" if order == "F" else "C").copy()


def _safe_globals(limit: int) -> Dict[Tuple[str, str], Any]:
    """The only globals a Detectron2 .pkl may reference: numpy array rebuilding and plain containers."""
    import codecs

    safe = _SafeNumpy(limit)
    table: Dict[Tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): safe.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Python 3 pickles bytes as _codecs.encode(str, "latin1") under protocol 2.
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 writes numpy._core.*, 1 numpy.core.*
        table[(mod, "_reconstruct")] = safe.reconstruct
        table[(mod, "scalar")] = safe.scalar
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        table[(mod, "_frombuffer")] = safe.frombuffer
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global (so nothing can execute)."""

    def __init__(self, f: Any, encoding: str = "latin1", limit: Optional[int] = None) -> None:
        super().__init__(f, encoding=encoding)
        if limit is None:  # arrays can never be larger than the file they come from
            limit = os.fstat(f.fileno()).st_size if hasattr(f, "fileno") else len(f.getbuffer())
        self._globals = _safe_globals(limit)

    def find_class(self, module: str, name: str) -> Any:
        obj = self._globals.get((module, name))
        if obj is None:
            raise RefusedGlobal(module, name)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")
