"""Group commit: requests for one key that arrive while that key's batch is being written wait and
go together in the next batch, so a burst of requests costs one transaction and one set of locks
instead of one each. (Placements use a single key: one batch in flight per process.)

A request whose caller has gone away (its future cancelled) before its batch starts is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    item: T
    future: asyncio.Future[Any] = field(repr=False)

    @property
    def open(self) -> bool:
        return not self.future.done()

    def resolve(self, value: Any) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


# handle(key, batch) answers every request of the batch (some may be answered a little later, by a
# task of its own), and returns those to try again in the next batch
Handler = Callable[[str, list[Pending[T]]], Awaitable[list[Pending[T]]]]


class Batcher(Generic[T]):
    def __init__(self, handle: Handler[T], max_batch: int = 64) -> None:
        self._handle = handle
        self.max_batch = max_batch
        self._queues: dict[str, list[Pending[T]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._later: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.requests = 0

    async def submit(self, key: str, item: T) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(Pending(item, fut))
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._drain(key))
        return await fut

    async def _drain(self, key: str) -> None:
        try:
            while True:
                queue = self._queues.get(key)
                if not queue:
                    return
                batch = [p for p in queue[: self.max_batch] if p.open]
                del queue[: self.max_batch]
                if not batch:
                    continue
                self.batches += 1
                self.requests += len(batch)
                try:
                    again = await self._handle(key, batch)
                except asyncio.CancelledError:
                    for p in batch:
                        p.fail(RuntimeError("the service is stopping"))
                    raise
                except Exception as exc:
                    for p in batch:
                        p.fail(exc)
                    continue
                queue[:0] = again
        finally:
            self._running.pop(key, None)
            if not self._queues.get(key):
                self._queues.pop(key, None)

    def later(self, answer: Coroutine[Any, Any, None]) -> None:
        """Answer some requests of a batch in a task of their own, so the key's next batch need not
        wait for that work; the task is cancelled with the batcher."""
        task = asyncio.create_task(answer)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def close(self) -> None:
        """Stop: running work is cancelled and every request still waiting is told so."""
        for task in [*self._running.values(), *self._later]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._queues.values():
            for p in queue:
                p.fail(RuntimeError("the service is stopping"))
        self._queues.clear()
