"""Group commit: requests for one key that arrive while that key's batch is being written wait and
go together in the next batch, so a burst of requests costs one transaction and one set of locks
instead of one each. (Placements use a single key.)

With a ``prepare`` stage the batches of a key form a pipeline: ``prepare`` does a batch's work in
memory (no awaits) and returns the writing of it, or None to have ``handle`` do the batch the
ordinary way (after every writing before it has ended). The next batch is prepared while the
previous one is being written, and up to ``depth`` writings are at work at once, started in order:
with a depth of 2 a writing can be waiting for the database's locks while the one before it
stores and commits. A writing must itself check, under those locks, that what its batch was
prepared on still holds (and redo the batch if not): a writing before it may not have succeeded.

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


@dataclass
class Writing(Generic[T]):
    """A prepared batch's writing: ``run`` answers the batch like a handler; it sets ``busy`` once
    the database is at work on the batch's data, and the next batch is prepared meanwhile."""

    run: Coroutine[Any, Any, list[Pending[T]]]
    busy: asyncio.Event


# prepare(key, batch): the batch's writing, or None to have the handler do the batch
Preparer = Callable[[str, list[Pending[T]]], "Writing[T] | None"]


class Batcher(Generic[T]):
    def __init__(
        self, handle: Handler[T], max_batch: int = 64, prepare: Preparer[T] | None = None, depth: int = 1
    ) -> None:
        self._handle = handle
        self._prepare = prepare
        self.max_batch = max_batch
        self.depth = depth  # prepared writings at work at once
        self._queues: dict[str, list[Pending[T]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._later: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.requests = 0
        self.prepared = 0  # batches written by their prepared writing

    async def submit(self, key: str, item: T) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(Pending(item, fut))
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._drain(key))
        try:
            return await fut
        finally:
            # a failure's traceback holds this frame: were the frame to hold the future that holds
            # the failure, every refused request would be a cycle left to the full collection
            del fut

    def _take(self, key: str) -> list[Pending[T]]:
        queue = self._queues.get(key, [])
        while queue:
            batch = [p for p in queue[: self.max_batch] if p.open]
            del queue[: self.max_batch]
            if batch:
                self.batches += 1
                self.requests += len(batch)
                return batch
        return []

    async def _drain(self, key: str) -> None:
        # prepared batches being written, oldest first: (task, its requests)
        writings: list[tuple[asyncio.Task[list[Pending[T]]], list[Pending[T]]]] = []
        ready: tuple[Writing[T], list[Pending[T]]] | None = None
        try:
            while True:
                batch = self._take(key)
                if not batch:
                    if not writings:
                        return
                    await self._settle(key, *writings.pop(0))
                    continue
                job = self._prepare(key, batch) if self._prepare is not None else None
                if job is None:  # the ordinary way: after every writing before it
                    while writings:
                        await self._settle(key, *writings.pop(0))
                    await self._settle(key, asyncio.ensure_future(self._handle(key, batch)), batch)
                    continue
                ready = (job, batch)  # prepared, not yet started: stopping now tells it too
                while len(writings) >= self.depth:
                    await self._settle(key, *writings.pop(0))
                ready = None
                self.prepared += 1
                task = asyncio.create_task(job.run)
                writings.append((task, batch))
                busy = asyncio.create_task(job.busy.wait())
                try:  # the next batch gathers until the database is at work on this one
                    await asyncio.wait({task, busy}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    busy.cancel()
        finally:
            for task, _ in writings:  # stopping: the writings in flight end before the drain does
                task.cancel()
            for task, batch in writings:
                with contextlib.suppress(BaseException):
                    await task
                for p in batch:
                    p.fail(RuntimeError("the service is stopping"))
            if ready is not None:
                ready[0].run.close()
                for p in ready[1]:
                    p.fail(RuntimeError("the service is stopping"))
            self._running.pop(key, None)
            if not self._queues.get(key):
                self._queues.pop(key, None)

    async def _settle(
        self, key: str, work: asyncio.Future[list[Pending[T]]], batch: list[Pending[T]]
    ) -> None:
        """Wait for a batch's work; what it hands back goes first in the queue, and if it fails,
        every request of the batch is told why."""
        try:
            again = await work
        except asyncio.CancelledError:
            work.cancel()
            for p in batch:
                p.fail(RuntimeError("the service is stopping"))
            raise
        except Exception as exc:
            for p in batch:
                p.fail(exc)
            return
        self._queues.setdefault(key, [])[:0] = again

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
