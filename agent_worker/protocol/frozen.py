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
    ``__post_init__``: for a caller that computed the derived fields already (a history page).

    The instance is built as a plain twin class with the same slots (its attribute stores are
    CPython's specialised slot stores, not a descriptor call each) and then given ``cls`` as its
    class, which CPython allows between classes of the same layout: ~0.9 instead of ~1.7 µs for 12
    fields. A class the twin cannot stand in for gets the descriptor calls."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    slots = tuple(getattr(cls, "__slots__", ()))
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": slots})
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_twin": twin}
    body = ["    self = _new(_twin)", *(f"    self.{n} = {n}" for n in names), "    self.__class__ = _cls"]
    make = _compiled(names, body, ns)
    if cls.__bases__ == (object,) and set(slots) == set(names):
        try:
            probe = make(*names)
        except TypeError:  # a layout the twin does not match (a __weakref__ slot, say)
            pass
        else:
            if type(probe) is cls and all(getattr(probe, n) == n for n in names):
                return make
    ns = {"_new": object.__new__, "_cls": cls}
    for n in names:
        ns[f"_s_{n}"] = cls.__dict__[n].__set__
    body = ["    self = _new(_cls)", *(f"    _s_{n}(self, {n})" for n in names)]
    return _compiled(names, body, ns)


def _compiled(names: list[str], body: list[str], ns: dict[str, Any]) -> Callable[..., Any]:
    exec(f"def make({', '.join(names)}):\n" + "\n".join([*body, "    return self"]) + "\n", ns)
    make: Callable[..., Any] = ns["make"]
    return make
