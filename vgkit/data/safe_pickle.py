"""Load annotation pickles without letting them run code.

A pickle is a program: any global it names is imported and may be called
(``os.system``, ``builtins.eval``, a class's ``__reduce__``...). Annotation
pickles such as the ``refer`` API's ``refs(berkeley).p`` only hold dicts,
lists, tuples, strings and numbers, and those need *no* global at all: Python
2's protocol-2 pickler writes them with dedicated opcodes (``EMPTY_DICT``,
``BINUNICODE``, ``SHORT_BINSTRING``, ``LONG1``...). So the unpickler below
refuses every global except a short allowlist of harmless builtin types, and
refuses before anything is called, since ``find_class`` runs when the
``GLOBAL`` opcode is read, ahead of the ``REDUCE`` that would call it.

Allowed globals, what needs them:

- ``set``, ``frozenset``, ``complex`` (``__builtin__.*`` in Python 2, ``builtins.*``
  in 3): protocol 2 has no opcode for them, so they are pickled as a call.
- ``dict``, ``list``, ``tuple``, ``object``: only as arguments of ``_reconstructor``.
- ``_codecs.encode`` for ``latin1`` only: Python 3 pickles ``bytes`` at protocol 2 as
  ``_codecs.encode(text, "latin1")``; other codecs are refused.
- ``copy_reg._reconstructor`` (py2 name of ``copyreg._reconstructor``): protocol 0/1
  pickles of builtin container subclasses; its class arguments must themselves
  pass this filter, so it only ever builds allowlisted types.

Python 2 ``str`` is bytes; ``encoding="latin1"`` (the default) maps each byte to one
character losslessly, ``encoding="bytes"`` keeps them as ``bytes`` so the caller can
decode them (e.g. as UTF-8) itself.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import copyreg
import io
import os
import pickle
from typing import IO, Any

from vgkit.errors import VgkitError

__all__ = ["ALLOWED_GLOBALS", "SafeUnpickler", "safe_load", "safe_loads"]


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to the latin-1 codec Python 3 uses for pickled bytes."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with codec {encoding!r}")
    return codecs.encode(obj, "latin1", errors)


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor``; `cls` and `base` already passed the allowlist."""
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


# Keyed by Python 3 names (after _compat_pickle mapping of Python 2 names).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _latin1_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}


class SafeUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose globals are limited to :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowlisted global, refuse (raise) any other."""
        key = _py3_name(module, name)
        if key in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[key]
        py3 = ".".join(key)
        raise _Refused(f"{module}.{name}" + (f" ({py3})" if py3 != f"{module}.{name}" else ""))

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: they would hand objects to application code."""
        raise _Refused(f"persistent id {pid!r}")


class _Refused(pickle.UnpicklingError):
    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


def _py3_name(module: str, name: str) -> tuple[str, str]:
    # Python 2 pickles say __builtin__/copy_reg; map them the way pickle's fix_imports does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def safe_load(source: str | os.PathLike[str] | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Unpickle a file (path or binary file object) admitting only builtin data types."""
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        try:
            with open(source, "rb") as f:
                return _load(f, label, encoding)
        except FileNotFoundError:
            raise VgkitError(f"{label}: pickle file not found") from None
    return _load(source, getattr(source, "name", "<pickle>"), encoding)


def safe_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickle bytes admitting only builtin data types."""
    return _load(io.BytesIO(data), "<pickle bytes>", encoding)


def _load(f: IO[bytes], label: str, encoding: str) -> Any:
    try:
        return SafeUnpickler(f, encoding=encoding).load()
    except _Refused as e:
        raise VgkitError(f"{label}: refused to unpickle: it names {e.what}, which is not "
                         f"plain data (only builtin containers and primitives are loaded)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError, OverflowError) as e:
        raise VgkitError(f"{label}: not a readable pickle ({type(e).__name__}: {e})") from None
