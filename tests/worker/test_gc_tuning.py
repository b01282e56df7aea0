"""``tune_gc``: start-up objects leave the collected generations; thresholds are applied."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent_worker import gcpause
from agent_worker.worker.service import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    deferring = gcpause.starts.active
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    gcpause.starts.active = deferring


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_live_objects_and_sets_thresholds() -> None:
    survivor = [object() for _ in range(10)]  # alive at start-up: frozen, never walked again
    tune_gc((900, 12, 11))
    assert gc.get_threshold() == (900, 12, 11)
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())  # frozen objects are out of gen 0-2
    assert gcpause.starts.active  # the process's owner opted in: run starts defer collections


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_can_leave_run_starts_alone() -> None:
    tune_gc(None, defer_starts=False)
    assert not gcpause.starts.active


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_without_thresholds_keeps_them() -> None:
    gc.set_threshold(701, 9, 8)
    tune_gc(None)
    assert gc.get_threshold() == (701, 9, 8)
