"""The declarative base of deltaw's result records: one field list per record, one serialisation.

A record is a keyword-only dataclass whose annotations *are* its JSON schema. ``to_json()`` and
``from_json()`` are derived from the annotations here, once, so a new field is added in one place
(its record class) and reaches the JSON, the reports, the CLI table and the CSV from there.

Annotation → JSON:

======================  ==================================================================
``float``               a finite number; NaN/±Inf are written as null (JSON has no NaN)
``int``, ``str``, ``bool``
``Literal[...]``        one of the given strings, checked on reading
``X | None``            null or X
``tuple[int, ...]``     a list (read back as a tuple)
``list[X]``             a list of X
``dict[str, X]``        an object with X values
``Vector``              a list of numbers (an ndarray of shape (k,) in Python)
``Grid``                a list of rows (an ndarray of shape (m, n) in Python)
a Record subclass       a nested object
======================  ==================================================================

A *document* is a record with a ``SCHEMA`` (``deltaw.<kind>/<version>``): its JSON carries
``"schema"`` and :meth:`Record.from_json` refuses a document of another kind or version with a
message that says what to do. :func:`read_document` dispatches on the schema name.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields
from datetime import datetime, timezone
from functools import cache
from typing import Annotated, ClassVar, Literal, Union

import numpy as np

from deltaw.errors import DeltawError

Vector = Annotated[np.ndarray, "vector"]  # (k,) floats
Grid = Annotated[np.ndarray, "grid"]  # (m, n) floats

#: schema name without version → the document's record class
DOCUMENTS: dict[str, type[Record]] = {}


def finite_or_none(value) -> float | None:
    """``float(value)``, or None when it is None, NaN or ±Inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def utc_now() -> str:
    """The current time in ISO 8601, UTC, to the second: ``2025-01-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def deltaw_version() -> str:
    from deltaw import __version__  # deferred: deltaw/__init__ is imported first

    return __version__


class Record:
    """Base of every result record; subclasses are ``@dataclass(kw_only=True, eq=False)``.

    ``SCHEMA`` (documents only) is ``"deltaw.<kind>/<version>"``. :meth:`validate` may be
    overridden to check what the annotations cannot say (e.g. descending singular values).
    """

    SCHEMA: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("SCHEMA"):
            DOCUMENTS[cls.SCHEMA.split("/")[0]] = cls

    def to_json(self) -> dict:
        """The plain-JSON form: dicts, lists, finite floats, ints, strings and None."""
        hints = _hints(type(self))
        out = {"schema": self.SCHEMA} if self.SCHEMA else {}
        for f in fields(self):
            out[f.name] = _dump(getattr(self, f.name), hints[f.name])
        return out

    @classmethod
    def from_json(cls, doc, where: str | None = None):
        """Read and check a JSON object; raises :class:`DeltawError` naming the key at fault."""
        where = where or (cls.SCHEMA or cls.__name__)
        if not isinstance(doc, Mapping):
            raise DeltawError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        if cls.SCHEMA:
            check_schema(doc, cls.SCHEMA)
        hints = _hints(cls)
        values = {}
        for f in fields(cls):
            if f.name in doc:
                values[f.name] = _load(doc[f.name], hints[f.name], f"{where}: {f.name!r}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise DeltawError(f"{where}: missing {f.name!r}")
        record = cls(**values)
        record.validate(where)
        return record

    def validate(self, where: str) -> None:
        """Checks beyond the annotations; the default has none."""


class FieldAccess(Mapping):
    """Read a small record as a mapping too: ``amp["factor"] is amp.factor``, ``dict(amp)``."""

    def __getitem__(self, key: str):
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))


def check_schema(doc: Mapping, schema: str) -> None:
    """Refuse a document of another kind or version, saying what to do."""
    found = doc.get("schema")
    name, version = schema.split("/")
    if found == schema:
        return
    if not isinstance(found, str) or "/" not in found:
        raise DeltawError(f"not a deltaw document: 'schema' is {found!r}, expected {schema!r}")
    found_name, found_version = found.split("/", 1)
    if found_name != name:
        raise DeltawError(f"this is a {found} document, expected {schema}")
    newer = found_version.isdigit() and int(found_version) > int(version)
    advice = ("upgrade deltaw to read it" if newer
              else "re-run the command with this deltaw to write it anew")
    raise DeltawError(f"{found} document from {'a newer' if newer else 'an older'} deltaw "
                      f"(this deltaw {deltaw_version()} reads {schema}): {advice}")


def read_document(doc) -> Record:
    """The record of any deltaw JSON document, by its ``"schema"``."""
    schema = doc.get("schema") if isinstance(doc, Mapping) else None
    kind = DOCUMENTS.get(schema.split("/")[0]) if isinstance(schema, str) else None
    if kind is None:
        known = ", ".join(sorted(c.SCHEMA for c in DOCUMENTS.values()))
        raise DeltawError(f"unknown 'schema' {schema!r} (deltaw writes {known})")
    return kind.from_json(doc)


# ---------------------------------------------------------------------------------------------
# one codec, driven by the annotation


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _optional(hint):
    """The X of ``X | None``, or None when ``hint`` is not optional."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _array_kind(hint) -> str | None:
    if typing.get_origin(hint) is Annotated:
        return typing.get_args(hint)[1]
    return None


def _dump(value, hint):
    if value is None:
        return None
    inner = _optional(hint)
    if inner is not None:
        return _dump(value, inner)
    kind = _array_kind(hint)
    if kind is not None:
        array = np.asarray(value, dtype=np.float64)
        return ([finite_or_none(x) for x in array.ravel()] if kind == "vector"
                else [[finite_or_none(x) for x in row] for row in array.reshape(len(array), -1)])
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Record):
        return value.to_json()
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return [_dump(v, args[0]) for v in value]
    if origin is dict:
        return {str(k): _dump(v, typing.get_args(hint)[1]) for k, v in value.items()}
    if hint is float:
        return finite_or_none(value)
    if hint is int:
        return int(value)
    if hint is bool:
        return bool(value)
    if hint is str or origin is Literal:
        return str(value)
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load(value, hint, where: str):
    inner = _optional(hint)
    if value is None:
        if inner is not None or hint is float:  # a float written as null was NaN/Inf
            return None
        raise DeltawError(f"{where} is null")
    if inner is not None:
        return _load(value, inner, where)
    kind = _array_kind(hint)
    if kind is not None:
        return _load_array(value, kind, where)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_json(value, where)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise DeltawError(f"{where} must be a list, got {value!r:.60}")
        items = [_load(v, typing.get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise DeltawError(f"{where} must be an object, got {value!r:.60}")
        return {str(k): _load(v, typing.get_args(hint)[1], f"{where}[{k!r}]") for k, v in value.items()}
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(repr(a) for a in typing.get_args(hint))
            raise DeltawError(f"{where} must be one of {allowed}, got {value!r:.60}")
        return value
    if hint is float:
        if not _is_number(value):
            raise DeltawError(f"{where} must be a number, got {value!r:.60}")
        return float(value) if math.isfinite(value) else None
    if hint is int:
        if not _is_number(value) or not float(value).is_integer():
            raise DeltawError(f"{where} must be an integer, got {value!r:.60}")
        return int(value)
    if hint is bool and not isinstance(value, bool):
        raise DeltawError(f"{where} must be true or false, got {value!r:.60}")
    if hint is str and not isinstance(value, str):
        raise DeltawError(f"{where} must be a string, got {value!r:.60}")
    return value


def _load_array(value, kind: str, where: str) -> np.ndarray:
    rows = value if kind == "grid" else [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in rows):
        raise DeltawError(f"{where} must be a {'list of rows' if kind == 'grid' else 'list'} of numbers")
    if any(len(r) != len(rows[0]) for r in rows):
        raise DeltawError(f"{where} must be a rectangular list of rows of numbers")
    if not all(x is None or _is_number(x) for r in rows for x in r):
        raise DeltawError(f"{where} must hold numbers only")
    array = np.asarray([[np.nan if x is None else x for x in r] for r in rows], dtype=np.float64)
    return array if kind == "grid" else array.reshape(-1)
