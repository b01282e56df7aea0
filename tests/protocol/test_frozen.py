"""protocol/frozen.py: the generated __init__ keeps a frozen dataclass's construction semantics."""

from __future__ import annotations

import dataclasses
import weakref

import pytest

from agent_worker.protocol.codec_core import Decoded
from agent_worker.protocol.frozen import fast_init, fast_make
from agent_worker.protocol.nodes import ApplyResult
from agent_worker.protocol.wire import NO_HEADERS, InboundMessage, make_inbound


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Sample:
    a: int
    b: str = "x"
    c: list[int] = dataclasses.field(default_factory=list)
    d: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", self.a * 2)


def test_positional_keyword_defaults_factory_and_post_init() -> None:
    s = _Sample(3)
    assert (s.a, s.b, s.c, s.d) == (3, "x", [], 6)
    assert _Sample(3, "y", [1]) == _Sample(a=3, b="y", c=[1])
    assert _Sample(1).c is not _Sample(1).c  # a fresh default per instance
    with pytest.raises(TypeError):
        _Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Sample(1, z=2)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.a = 4  # type: ignore[misc]


def test_message_types_keep_their_semantics() -> None:
    extras = {"ai": {"transport": {"run-id": "r"}, "codec": {"kind": "text"}}}
    m = InboundMessage("ai-output", "hi", extras, serial="s1")
    assert m.transport_headers == {"run-id": "r"} and m.codec_headers == {"kind": "text"}
    assert m.action == "message.create" and m.version_serial is None
    assert dataclasses.replace(m, data="ho").transport_headers == {"run-id": "r"}
    assert m == InboundMessage(name="ai-output", data="hi", extras=extras, serial="s1")
    assert ApplyResult() == ApplyResult(folded=False) and ApplyResult(run_id="r").run_id == "r"
    assert Decoded().inputs == [] and Decoded(outputs=[{"type": "x"}]).outputs == [{"type": "x"}]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.data = "x"  # type: ignore[misc]


def test_fast_make_sets_every_slot_including_derived_ones() -> None:
    make = fast_make(_Sample)
    s = make(3, "y", [1], 99)  # no __post_init__: the derived field is the caller's
    assert (s.a, s.b, s.c, s.d) == (3, "y", [1], 99)
    assert s != _Sample(3, "y", [1])  # d is compared: 99 vs the 6 __post_init__ derives
    assert make(3, "y", [1], 6) == _Sample(3, "y", [1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.a = 4  # type: ignore[misc]


def test_make_inbound_is_the_constructor_given_the_header_sections() -> None:
    extras = {"ai": {"transport": {"run-id": "r"}, "codec": {"kind": "text"}}}
    built = InboundMessage("ai-output", "hi", extras, "message.append", "s1", "v1", "c", "k", "i", 5)
    made = make_inbound(
        "ai-output", "hi", extras, "message.append", "s1", "v1", "c", "k", "i", 5,
        extras["ai"]["transport"], extras["ai"]["codec"],
    )  # fmt: skip
    assert made == built and repr(made) == repr(built) and hash(made.id) == hash(built.id)
    assert (made.transport_headers, made.codec_headers) == (built.transport_headers, built.codec_headers)
    bare = make_inbound(
        "x", None, None, "message.create", None, None, None, None, None, None, NO_HEADERS, NO_HEADERS
    )
    assert bare == InboundMessage("x", None, None)
    assert bare.transport_headers == InboundMessage("x", None, None).transport_headers == {}


def test_fast_make_builds_instances_of_the_class_itself() -> None:
    made = fast_make(ApplyResult)(None, None, True, "r", "c", "i", "s", None, None, None, (), ())
    assert type(made) is ApplyResult and made == ApplyResult(
        folded=True, run_id="r", codec_message_id="c", input_codec_message_id="i", serial="s"
    )
    assert hash(made) == hash(ApplyResult(None, None, True, "r", "c", "i", "s"))
    assert "Twin" not in repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.run_id = "x"  # type: ignore[misc]


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class _WithWeakref:
    a: int
    b: str


def test_fast_make_falls_back_where_the_twin_cannot_stand_in() -> None:
    made = fast_make(_WithWeakref)(1, "x")  # the __weakref__ slot is not a field: descriptor calls
    assert type(made) is _WithWeakref and made == _WithWeakref(1, "x")
    assert weakref.ref(made)() is made
