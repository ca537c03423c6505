"""pipeline.io.ahead.read_ahead: order, errors in place, early stop closes the source and its thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pipeline.io.ahead import read_ahead


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "read-ahead"}


def test_items_come_in_order_and_the_thread_ends() -> None:
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert not _threads()


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad batch at 3")

    got = []
    with pytest.raises(ValueError, match="bad batch at 3"):
        for x in read_ahead(gen()):
            got.append(x)
    assert got == [1, 2]
    assert not _threads()


def test_stopping_early_closes_the_source_and_stops_reading() -> None:
    produced, closed = [], []

    def gen() -> Iterator[int]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.append(True)

    it = read_ahead(gen(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert closed == [True]
    assert len(produced) <= 3 + 2 + 1  # taken, queued, and at most the one in flight
    assert not _threads()


def test_nested_read_ahead_stops_both_producers() -> None:
    closed = []

    def gen() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed.append("inner")

    it = read_ahead(read_ahead(gen()))
    assert next(it) == 0
    it.close()
    assert closed == ["inner"]
    assert not _threads()
