"""Typed dataclass configs to and from JSON-ready dicts.

Every trainable thing in credo is described by a dataclass whose fields carry a docstring; the same
dataclass is written to ``cfg.json`` next to the weights and generates the command-line flags. Nested
dataclasses and tuples survive the round trip (JSON has only lists, so tuples are rebuilt from the type hints).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass instance as a plain dict of JSON types (nested dataclasses become dicts)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild ``cls`` from :func:`config_to_dict` output; unknown keys are an error that names them."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError):
                continue
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if origin is tuple and isinstance(value, list | tuple):
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (``name: type = default`` then ``\"\"\"doc\"\"\"``)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
