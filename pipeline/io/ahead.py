"""Read ahead: an iterator's items produced on a thread while the consumer works on the last one.

Ingest is a pipeline of three steps with different costs (on 300k long documents: decoding the
Parquet batches ~0.8 s, mapping them to canonical rows ~1.9 s, compressing and writing shards
~1.3 s); Arrow, Polars and pyarrow's writer release the GIL, so each step on its own thread
(:func:`pipeline.io.readers.read_source` decodes ahead of the mapping, the ingest loop maps ahead
of the writing) takes the ingest to about its slowest step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced on a thread up to ``depth`` ahead of the consumer.

    The producer's exception is raised here, in order; when the consumer stops early (a ``limit``,
    an error, Ctrl-C) the producer stops at its next item and ``items`` is closed.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=produce, name="read-ahead", daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        t.join()
