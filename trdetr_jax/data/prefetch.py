"""Background prefetching: load and transfer the next batches while the step runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(
    items: Iterable[Any], put: Callable[[Any], Any] | None = None, depth: int = 2
) -> Iterator[Any]:
    """Iterate ``items`` on a worker thread, ``depth`` items ahead of the consumer.

    ``put`` is applied on the worker thread to each item, or to the first element when the
    item is a ``(batch, metas)`` tuple; pass a function that places the batch on devices
    (e.g. ``jax.device_put`` with a sharding), so transfers overlap the step. Errors raised
    while producing an item are re-raised by the consumer at that item. Closing the
    generator (or dropping it) stops the worker.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if put is not None:
                    if isinstance(item, tuple):
                        item = (put(item[0]), *item[1:])
                    else:
                        item = put(item)
                if not offer(item):
                    return
        except BaseException as e:  # noqa: BLE001 (handed to the consumer)
            offer(_Raised(e))
            return
        offer(_DONE)

    thread = threading.Thread(target=work, name="trdetr-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
