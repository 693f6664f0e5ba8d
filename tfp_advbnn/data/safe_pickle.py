"""Restricted unpickling: reads the pickled CIFAR-10 batches without running any code they hold.

A pickle can name any importable callable and have it called while loading. The official CIFAR-10
python batches need only numpy array reconstruction (and, for protocol-2 pickles written by
Python 3, latin-1 bytes); every other global, and every persistent id, is refused before it is
resolved, so a tampered file raises `UnsafePickleError` and nothing of its payload executes.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping

import numpy as np


class UnsafePickleError(ValueError):
    """A pickle asked for a global that the CIFAR-10 format does not need; nothing was run."""


class _Forbidden(pickle.UnpicklingError):
    """Raised inside unpickling when the pickle asks for something outside the allow-list."""


def _checked_reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by __setstate__; only the
    # plain ndarray class may be instantiated, so no other type's constructor can be reached.
    if subtype is not np.ndarray:
        raise _Forbidden(f"array reconstruction of {subtype!r} is not allowed")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _checked_dtype(*args):
    descr = np.dtype(*args)
    # Object arrays would let the pickle place arbitrary Python objects inside the data array.
    if descr.hasobject:
        raise _Forbidden(f"object dtype {descr!r} is not allowed")
    return descr


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles written by Python 3 store every bytes object (the dict keys and the pixel
    # buffer) as _codecs.encode(str, "latin1"); nothing else of the codec machinery is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Forbidden("_codecs.encode is only allowed as encode(str, 'latin1')")
    return text.encode("latin-1")


# The numpy function that rebuilds arrays, found through ndarray.__reduce__ rather than a private
# module path, which moved from numpy.core to numpy._core in numpy 2.
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]

_ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable] = {
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays and protocol-2 bytes need."""

    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _Forbidden(f"forbidden global '{module}.{name}'")
        return allowed

    def persistent_load(self, pid):
        raise _Forbidden(f"forbidden persistent id {pid!r}")


def restricted_unpickle(data: bytes, source: str):
    """Unpickles `data` allowing only numpy array reconstruction; `source` names it in errors.

    Dict keys and strings of Python 2 pickles come back as bytes (`encoding="bytes"`).

    Raises:
      UnsafePickleError: the pickle references any other global (its payload never executes).
      ValueError: the pickle is truncated or malformed.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Forbidden as err:
        raise UnsafePickleError(
            f"{source}: refused to unpickle: {err}. A CIFAR-10 batch only needs numpy array "
            "reconstruction; this file is not an official CIFAR-10 pickle and was not loaded."
        ) from None
    except Exception as err:  # Malformed pickles fail in many ways; all mean a corrupt file.
        raise ValueError(f"{source}: corrupt or truncated pickle: {err!r}") from None
