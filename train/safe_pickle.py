"""A restricted unpickler for CIFAR-10's python batches: a data set is untrusted input.

``pickle.load`` calls whatever callable the file names (``os.system``, ``builtins.eval``, ...), so a crafted
``data_batch_1`` or ``batches.meta`` would run its code. ``load(f)`` reads the same files (``encoding="latin1"``,
as the real Python-2 files need) but ``SafeUnpickler.find_class`` admits only what a CIFAR-10 batch holds:

- dict, list, tuple, str, bytes, int, float, bool, None: built by the pickle opcodes themselves, without
  ``find_class``, so nothing needs admitting for them;
- ``_codecs.encode(text, "latin1")`` and ``bytes()`` (also as ``__builtin__``): how Python 3 writes ``bytes`` at
  protocols 0-2; any other codec or argument is refused;
- numpy arrays: ``numpy.core.multiarray._reconstruct`` (the name the real files, written by numpy 1.x, use),
  ``numpy._core.multiarray._reconstruct`` (numpy 2's name), ``numpy.core.numeric._frombuffer`` /
  ``numpy._core.numeric._frombuffer`` (protocol 5), ``numpy.ndarray`` (only as the type handed to
  ``_reconstruct``, never called) and ``numpy.dtype``. Each is a checking stand-in, not numpy's own callable:
  a dtype must be a plain number, bool, bytes or str dtype (object dtypes, whose arrays hold arbitrary pickled
  objects, are refused, as are structured/void, datetime and any dtype whose pickled state does not match a
  fresh one of the same kind: crafted flags, fields or sizes), and is always a new copy (the pickled
  ``copy=False`` would hand back numpy's shared dtype to be overwritten by the state that follows).
  An array is rebuilt with a fresh dtype of the checked kind; every array ``load`` returns is a plain
  ``numpy.ndarray``.

Everything else (``os.system``, ``posix.system``, ``subprocess.*``, ``builtins.eval``/``exec``/``getattr``/
``open``, ``numpy.core.multiarray.scalar``, ...) raises ``Refused``, a ``pickle.UnpicklingError`` whose message
names the refused ``module.name`` (``.what``), before anything the file names is called.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

__all__ = ["Refused", "SafeUnpickler", "load", "loads"]

# the kinds of dtype a CIFAR-10 batch may hold: bool, signed/unsigned int, float, complex, bytes, str
_PLAIN_KINDS = frozenset("biufcSU")
_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


class Refused(pickle.UnpicklingError):
    """The pickle names something a CIFAR-10 batch never holds; ``what`` says what (e.g. ``"os.system"``)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"refused {what}: an untrusted pickle may only hold dict, list, str, bytes, int and numpy "
                         f"arrays of a plain (non-object) dtype")
        self.what = what


def _checked_dtype(dt: Any) -> np.dtype:
    """A fresh dtype equal to ``dt`` if ``dt`` is a plain dtype whose state was not tampered with, else ``Refused``."""
    if not isinstance(dt, np.dtype):
        raise Refused(f"a numpy array whose dtype is a {type(dt).__name__}")
    if dt.hasobject or dt.kind == "O":
        raise Refused("a numpy array of dtype object")
    if dt.kind not in _PLAIN_KINDS or dt.names is not None or dt.subdtype is not None:
        raise Refused(f"a numpy array of dtype {dt.str!r}")
    try:
        fresh = np.dtype(dt.str)
    except Exception:  # noqa: BLE001 - a tampered itemsize gives a string numpy cannot parse
        raise Refused(f"a numpy dtype with a crafted state ({dt.str!r})") from None
    if (fresh.kind != dt.kind or fresh.itemsize != dt.itemsize or fresh.flags != dt.flags
            or fresh.alignment != dt.alignment or fresh.hasobject):
        raise Refused(f"a numpy dtype with a crafted state ({dt.str!r}, flags {dt.flags})")
    return fresh


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """Stand-in for ``numpy.dtype`` as pickles call it (``dtype("u1", False, True)`` then its state)."""
    if isinstance(obj, bytes):
        obj = obj.decode("latin1")
    if not isinstance(obj, str):
        raise Refused(f"numpy.dtype of a {type(obj).__name__}")
    try:
        dt = np.dtype(obj)
    except Exception as exc:  # noqa: BLE001
        raise pickle.UnpicklingError(f"bad numpy dtype {obj!r} ({exc})") from None
    if dt.hasobject or dt.kind == "O":
        raise Refused("a numpy array of dtype object")
    if dt.kind not in _PLAIN_KINDS or dt.names is not None or dt.subdtype is not None:
        raise Refused(f"a numpy array of dtype {obj!r}")
    return np.dtype(obj, False, True)  # always a copy: its pickled state is applied to it next


class _NdarrayType:
    """Stand-in for ``numpy.ndarray``: only a marker handed to ``_reconstruct``; calling it is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> None:
        raise Refused("a call of numpy.ndarray")


class _PendingArray(np.ndarray):
    """What ``_reconstruct`` returns: its pickled state is checked before numpy applies it, with a fresh dtype;
    ``load`` turns it into a plain ``numpy.ndarray``."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("bad numpy array state")
        version, (shape, dt, fortran, raw) = (state[0] if len(state) == 5 else 0), state[-4:]
        if isinstance(raw, list):  # how arrays of Python objects are pickled
            raise Refused("a numpy array of dtype object")
        if not isinstance(raw, (bytes, bytearray, str)):
            raise pickle.UnpicklingError(f"bad numpy array data (a {type(raw).__name__})")
        fresh = _checked_dtype(dt)
        super().__setstate__((version, shape, fresh, bool(fortran), raw) if len(state) == 5
                             else (shape, fresh, bool(fortran), raw))
        self._checked = True


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _PendingArray:
    """Stand-in for ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")``."""
    if subtype is not _NdarrayType:
        raise Refused(f"numpy's _reconstruct of a {getattr(subtype, '__name__', type(subtype).__name__)}")
    return np.ndarray.__new__(_PendingArray, (0,), np.uint8)


def _frombuffer(buf: Any, dt: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in for ``numpy._core.numeric._frombuffer`` (arrays pickled at protocol 5)."""
    if isinstance(buf, pickle.PickleBuffer):
        buf = buf.raw()
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise pickle.UnpicklingError(f"bad numpy array data (a {type(buf).__name__})")
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"bad numpy array order {order!r}")
    return np.frombuffer(buf, dtype=_checked_dtype(dt)).reshape(shape, order=order)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: only ``encode(str, "latin1")``, how Python 3 pickles bytes at protocol 2."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
        raise Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: only ``bytes()``, how Python 3 pickles ``b""`` at protocol 2."""
    if args:
        raise Refused("a call of builtins.bytes with arguments")
    return b""


_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytes"): _bytes,
}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that admits only the globals listed in the module docstring; anything else is
    ``Refused``, naming it."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ADMITTED.get((module, name))
        if found is None:
            raise Refused(f"{module}.{name}")
        return found


def _plain(obj: Any, seen: dict[int, Any]) -> Any:
    """``obj`` with every ``_PendingArray`` in its dicts, lists and tuples made a plain ``numpy.ndarray``."""
    if isinstance(obj, _PendingArray):
        if not getattr(obj, "_checked", False):
            raise pickle.UnpicklingError("a numpy array without its data")
        return obj.view(np.ndarray)
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    if id(obj) in seen:
        return seen[id(obj)]
    seen[id(obj)] = obj  # before recursing: a list or dict may contain itself
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _plain(value, seen)
    elif isinstance(obj, list):
        obj[:] = [_plain(v, seen) for v in obj]
    else:
        items = tuple(_plain(v, seen) for v in obj)
        if any(a is not b for a, b in zip(items, obj)):
            obj = seen[id(obj)] = items
    return obj


def load(file: IO[bytes], *, encoding: str = "latin1") -> Any:
    """``pickle.load(file, encoding=encoding)`` through ``SafeUnpickler``; ``Refused`` names what was refused."""
    return _plain(SafeUnpickler(file, encoding=encoding).load(), {})


def loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """``load`` of a bytes object."""
    import io

    return load(io.BytesIO(data), encoding=encoding)
