"""Group commit: what arrives during a batch goes in the next one; closing answers everyone."""

from __future__ import annotations

import asyncio

import pytest

from service.batching import Batcher, Pending, Preparer, Writing

from .conftest import cycles_left_by


async def test_requests_arriving_during_a_batch_go_together_in_the_next() -> None:
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def handle(key: str, batch: list[Pending[int]]) -> list[Pending[int]]:
        seen.append([p.item for p in batch])
        if len(seen) == 1:
            await gate.wait()
        for p in batch:
            p.resolve(p.item * 10)
        return []

    b: Batcher[int] = Batcher(handle)
    first = asyncio.create_task(b.submit("k", 1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.submit("k", i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert seen == [[1], [2, 3, 4]]


async def test_a_failed_request_leaves_no_cycle_behind() -> None:
    # the failure is raised in the caller's frames, which its traceback keeps: had submit's frame
    # kept the future that keeps the failure, each refusal would wait for a full collection
    async def handle(key: str, batch: list[Pending[int]]) -> list[Pending[int]]:
        for p in batch:
            p.fail(ValueError(f"no room for {p.item}"))
        return []

    b: Batcher[int] = Batcher(handle)
    failed = 0

    async def refusals() -> None:
        nonlocal failed
        for i in range(10):
            try:
                await b.submit("k", i)
            except ValueError:
                failed += 1

    found = await cycles_left_by(refusals)
    assert failed == 10
    assert found == 0


async def test_closing_answers_requests_still_waiting() -> None:
    started = asyncio.Event()

    async def handle(key: str, batch: list[Pending[int]]) -> list[Pending[int]]:
        started.set()
        await asyncio.Event().wait()  # never finishes by itself
        return []

    b: Batcher[int] = Batcher(handle)
    running = asyncio.create_task(b.submit("k", 1))
    await started.wait()
    waiting = asyncio.create_task(b.submit("k", 2))
    await asyncio.sleep(0)
    await b.close()
    for task in (running, waiting):
        with pytest.raises(RuntimeError, match="stopping"):
            await asyncio.wait_for(task, 2)


def _writings(
    log: list[tuple[str, int]], gates: dict[int, asyncio.Event], fails: frozenset[int] = frozenset()
) -> Preparer[int]:
    """A prepare that logs each item it prepares, and whose writing of item i logs its start and
    end, waits for gates[i] if any (after telling the batcher the database is at work on it), and
    fails for the items in ``fails``."""

    def prepare(key: str, batch: list[Pending[int]]) -> Writing[int]:
        item = batch[0].item
        log.append(("prepared", item))
        busy = asyncio.Event()

        async def write() -> list[Pending[int]]:
            log.append(("writing", item))
            busy.set()
            if item in gates:
                await gates[item].wait()
            if item in fails:
                raise ConnectionError(f"lost the database writing {item}")
            log.append(("written", item))
            batch[0].resolve(item * 10)
            return []

        return Writing(write(), busy)

    return prepare


async def _never(key: str, batch: list[Pending[int]]) -> list[Pending[int]]:
    raise AssertionError("every batch here is prepared")


async def test_the_next_batch_is_prepared_while_the_previous_is_written_and_writings_keep_order() -> None:
    log: list[tuple[str, int]] = []
    gate = asyncio.Event()
    b: Batcher[int] = Batcher(_never, max_batch=1, prepare=_writings(log, {1: gate}))
    tasks = [asyncio.create_task(b.submit("k", i)) for i in (1, 2, 3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert log == [("prepared", 1), ("writing", 1), ("prepared", 2)]  # 2 ahead, 1 not yet written
    gate.set()
    assert await asyncio.gather(*tasks) == [10, 20, 30]
    writes = [e for e in log if e[0] != "prepared"]
    assert writes == [
        ("writing", 1),
        ("written", 1),
        ("writing", 2),
        ("written", 2),
        ("writing", 3),
        ("written", 3),
    ]
    assert b.prepared == 3


async def test_with_depth_two_a_writing_starts_while_the_one_before_is_at_work_and_no_third() -> None:
    log: list[tuple[str, int]] = []
    gates = {1: asyncio.Event()}
    b: Batcher[int] = Batcher(_never, max_batch=1, prepare=_writings(log, gates, frozenset({1})), depth=2)
    tasks = [asyncio.create_task(b.submit("k", i)) for i in (1, 2, 3)]
    for _ in range(10):
        await asyncio.sleep(0)
    # 2 was written beside 1, which is still at work; 3 is prepared and waits for 1 to end (two
    # at once at most)
    assert log == [
        ("prepared", 1),
        ("writing", 1),
        ("prepared", 2),
        ("writing", 2),
        ("written", 2),
        ("prepared", 3),
    ]
    gates[1].set()
    got = await asyncio.gather(*tasks, return_exceptions=True)
    # the failed writing fails its own batch only
    assert isinstance(got[0], ConnectionError) and got[1:] == [20, 30]
    assert log[6:] == [("writing", 3), ("written", 3)]
    assert b.prepared == 3


@pytest.mark.parametrize("depth", [1, 2])
async def test_closing_tells_the_batches_at_work_the_one_prepared_and_those_waiting(depth: int) -> None:
    log: list[tuple[str, int]] = []
    gates = {1: asyncio.Event(), 2: asyncio.Event()}  # never set: writings stay at work
    b: Batcher[int] = Batcher(_never, max_batch=1, prepare=_writings(log, gates), depth=depth)
    tasks = [asyncio.create_task(b.submit("k", i)) for i in (1, 2, 3, 4)]
    for _ in range(10):
        await asyncio.sleep(0)
    # at work: the first ``depth``; prepared and waiting for room: the next one; then one queued
    assert log == [
        *[e for i in range(1, depth + 1) for e in (("prepared", i), ("writing", i))],
        ("prepared", depth + 1),
    ]
    await b.close()
    for task in tasks:
        with pytest.raises(RuntimeError, match="stopping"):
            await asyncio.wait_for(task, 2)
