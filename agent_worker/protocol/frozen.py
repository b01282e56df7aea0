"""A cheaper ``__init__`` for the frozen slots dataclasses built once per folded message.

A frozen dataclass's generated ``__init__`` sets every field through ``object.__setattr__`` (looked
up per field, per call): ~2 µs for ``InboundMessage`` or ``ApplyResult``, several per message when
a 1,000-message session is rebuilt from history. The replacement sets the slots through their
descriptors directly (same signature, defaults and ``__post_init__``); equality, hashing, repr and
immutability stay the dataclass's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["fast_init", "fast_make"]

T = TypeVar("T")
_UNSET: Any = object()


def fast_init(cls: type[T]) -> type[T]:
    """Class decorator (applied above ``@dataclass(frozen=True, slots=True)``)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    ns: dict[str, Any] = {"_UNSET": _UNSET}
    params: list[str] = []
    body: list[str] = []
    for f in fields:
        if not f.init:
            continue
        if f.default_factory is not dataclasses.MISSING:
            ns[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_UNSET")
            body.append(f"    if {f.name} is _UNSET: {f.name} = _f_{f.name}()")
        elif f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        ns[f"_s_{f.name}"] = cls.__dict__[f.name].__set__
        body.append(f"    _s_{f.name}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n", ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning to a method
    return cls


def fast_make(cls: type[T]) -> Callable[..., T]:
    """A positional constructor setting every slot, derived ones included, without ``__init__`` or
    ``__post_init__``: for a caller that computed the derived fields already (a history page)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = ["    self = _new(_cls)"]
    for f in fields:
        ns[f"_s_{f.name}"] = cls.__dict__[f.name].__set__
        body.append(f"    _s_{f.name}(self, {f.name})")
    body.append("    return self")
    names = ", ".join(f.name for f in fields)
    exec(f"def make({names}):\n" + "\n".join(body) + "\n", ns)
    make: Callable[..., T] = ns["make"]
    return make
