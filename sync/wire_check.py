"""Decoding checks of :mod:`sync.wire`: every value read off the wire against its dataclass field's type.

:func:`_build` makes a message (or a nested one) from its msgpack map, checking each field with :func:`_check`
(``int`` fields must be ints, lists must hold the declared element type, free-form maps only JSON-like values),
then runs the class's checks beyond the types (:data:`SEMANTIC`, filled by :mod:`sync.wire`). Everything it refuses
raises :class:`WireError` with a one-line reason. Split from :mod:`sync.wire` (the messages and the frames).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union


class WireError(ValueError):
    """A frame list that is not a valid message (the message is the one-line reason)."""


SEMANTIC: dict[type, typing.Callable] = {}
"""Checks beyond the field types, per message class, run by :func:`_build` on what it decoded."""

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        h = _HINTS[cls] = typing.get_type_hints(cls)
    return h


def _build(cls: type, body: dict, where: str):
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _check(body[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise WireError(f"{where}: missing field {f.name!r}")
    obj = cls(**kwargs)
    check = SEMANTIC.get(cls)
    if check is not None:
        check(obj, where)
    return obj


def _plain_value(v: Any, where: str, depth: int = 0) -> Any:
    """Values allowed in free-form fields: JSON-like data plus bytes."""
    if v is None or type(v) in (bool, int, float, str, bytes):
        return v
    if depth > 32:
        raise WireError(f"{where}: nested too deeply")
    if isinstance(v, list):
        for x in v:
            _plain_value(x, where, depth + 1)
        return v
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise WireError(f"{where}: map key {k!r} is not a string"[:150])
            _plain_value(x, where, depth + 1)
        return v
    raise WireError(f"{where}: value of type {type(v).__name__} not allowed")


def _check(v: Any, tp: Any, where: str) -> Any:
    """Return ``v`` (ints widened to float where a float is declared) if it has type ``tp``."""
    if tp is Any:
        return _plain_value(v, where)
    if tp is int:
        if type(v) is not int:
            raise WireError(f"{where}: expected int, got {type(v).__name__}")
        return v
    if tp is float:
        if type(v) is float:
            return v
        if type(v) is int:
            return float(v)
        raise WireError(f"{where}: expected float, got {type(v).__name__}")
    if tp is str or tp is bool:
        if type(v) is not tp:
            raise WireError(f"{where}: expected {tp.__name__}, got {type(v).__name__}")
        return v
    if tp is dict:
        if not isinstance(v, dict):
            raise WireError(f"{where}: expected map, got {type(v).__name__}")
        return _plain_value(v, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise WireError(f"{where}: expected {tp.__name__} map, got {type(v).__name__}")
        return _build(tp, v, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errors = []
        for alt in args:
            if alt is type(None):
                continue
            try:
                return _check(v, alt, where)
            except WireError as e:
                errors.append(str(e))
        raise WireError(errors[0] if len(errors) == 1 else f"{where}: matches none of {tp}")
    if origin is list:
        if not isinstance(v, list):
            raise WireError(f"{where}: expected list, got {type(v).__name__}")
        (et,) = args
        if et is int:
            if not all(type(x) is int for x in v):
                raise WireError(f"{where}: expected list of ints")
            return v
        if et is float:
            if not all(type(x) is float for x in v):
                if not all(type(x) in (float, int) for x in v):
                    raise WireError(f"{where}: expected list of floats")
                return [float(x) for x in v]
            return v
        return [_check(x, et, f"{where}[]") for x in v]
    if origin is dict:
        if not isinstance(v, dict):
            raise WireError(f"{where}: expected map, got {type(v).__name__}")
        kt, vt = args
        return {_check(k, kt, f"{where}.key"): _check(x, vt, f"{where}[{k}]") for k, x in v.items()}
    if origin is tuple:
        if not isinstance(v, list):
            raise WireError(f"{where}: expected list, got {type(v).__name__}")
        return tuple(_check(x, args[0], f"{where}[]") for x in v)
    raise WireError(f"{where}: no checker for {tp}")  # pragma: no cover - schema bug
