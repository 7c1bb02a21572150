"""The start-up heap is frozen out of the collector's full passes, and stays so."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lockgate_server.heap import freeze_startup_heap


class Marker:
    """Instances of a plain class are tracked by the collector (small dicts may not be)."""


def walked(obj: object) -> bool:
    """Whether a collection would walk `obj` (frozen objects are in none of its generations)."""
    return any(candidate is obj for candidate in gc.get_objects())


@pytest.fixture
def unfreeze_after() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_objects_from_before_the_freeze_are_not_walked_and_later_ones_are(unfreeze_after: None) -> None:
    before = Marker()
    assert walked(before)
    frozen = freeze_startup_heap()
    after = Marker()
    assert frozen >= 1 and gc.get_freeze_count() == frozen
    assert not walked(before)
    assert walked(after)
    gc.collect()  # a full collection leaves the frozen objects frozen
    assert not walked(before)
