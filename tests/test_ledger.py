"""The buffer and the ledger without a thread: admission, closing, and where every event is."""

from __future__ import annotations

import queue

import pytest

from analytics_queue._buffer import BufferBytesFull, BufferClosed, EventBuffer
from analytics_queue._ledger import Ledger, Pending
from analytics_queue.event import QueuedEvent


def event(index: int, size: int = 0) -> QueuedEvent:
    return QueuedEvent(f"e{index}", "u", {}, None, index, float(index), size=size)


def pending(seq: int) -> Pending:
    return Pending(seq, b"{}", float(seq))


def test_a_closed_buffer_refuses_in_the_same_step_as_the_put() -> None:
    buffer = EventBuffer(10)
    buffer.put_nowait(event(0))
    buffer.close()
    with pytest.raises(BufferClosed):
        buffer.put_nowait(event(1))
    assert buffer.qsize() == 1  # what was accepted before stays to be drained


def test_the_buffer_is_bounded_by_count_and_by_bytes() -> None:
    buffer = EventBuffer(2, max_bytes=100)
    buffer.put_nowait(event(0, size=60))
    with pytest.raises(BufferBytesFull):
        buffer.put_nowait(event(1, size=60))
    buffer.put_nowait(event(2, size=40))
    with pytest.raises(queue.Full):
        buffer.put_nowait(event(3, size=1))
    assert [e.uuid for e in buffer.take(10)] == [0, 2]
    assert buffer.bytes_waiting == 0
    alone = EventBuffer(2, max_bytes=10)
    alone.put_nowait(event(4, size=50))  # one event always fits an empty buffer
    assert alone.qsize() == 1


def test_a_put_wakes_the_worker_once_a_batch_waits() -> None:
    buffer = EventBuffer(10, wake_at=3)
    buffer.put_nowait(event(0))
    buffer.put_nowait(event(1))
    assert not buffer.wake.is_set()
    buffer.put_nowait(event(2))
    assert buffer.wake.is_set()


def test_every_event_is_in_one_place_until_final() -> None:
    buffer = EventBuffer(100)
    ledger = Ledger(buffer)
    for index in range(5):
        buffer.put_nowait(event(index))
    assert ledger.totals()[:2] == (5, 5)
    target = ledger.flush_target()
    assert target == 5
    batch = ledger.take(3)
    assert (batch.first_seq, len(batch.fresh), batch.open) == (0, 3, 3)
    assert ledger.totals()[:2] == (5, 5)  # in flight still counts as unfinished
    ledger.settle(batch, 1)
    ledger.requeue(batch, [pending(1), pending(2)])
    assert ledger.close(batch) == 0
    assert ledger.totals()[:2] == (5, 4)
    assert not ledger.reached(target)
    retry = ledger.take(10)
    assert [p.seq for p in retry.retried] == [1, 2] and len(retry.fresh) == 2
    ledger.settle(retry, 4)
    ledger.close(retry)
    assert ledger.reached(target) and ledger.totals()[:2] == (5, 0)
    assert ledger.flush_target() is None


def test_close_reports_events_a_step_left_unaccounted() -> None:
    buffer = EventBuffer(10)
    ledger = Ledger(buffer)
    buffer.put_nowait(event(0))
    buffer.put_nowait(event(1))
    batch = ledger.take(10)
    ledger.settle(batch, 1)
    assert ledger.close(batch) == 1
    assert ledger.totals()[:2] == (2, 0)


def test_the_retry_line_stays_in_sequence_order_when_batches_come_back_out_of_order() -> None:
    buffer = EventBuffer(10)
    ledger = Ledger(buffer)
    for index in range(4):
        buffer.put_nowait(event(index))
    first, second = ledger.take(2), ledger.take(2)
    ledger.requeue(second, [pending(2), pending(3)])
    ledger.requeue(first, [pending(0), pending(1)])
    ledger.close(first)
    ledger.close(second)
    assert [p.seq for p in ledger.take(10).retried] == [0, 1, 2, 3]


def test_a_flush_waiter_is_released_when_its_target_becomes_final() -> None:
    buffer = EventBuffer(10)
    ledger = Ledger(buffer)
    buffer.put_nowait(event(0))
    waiter = ledger.add_waiter(1)
    assert waiter is not None and waiter.locked()
    batch = ledger.take(10)
    ledger.settle(batch, 1)
    assert waiter.locked()  # released when the step closes, not before
    ledger.close(batch)
    assert not waiter.locked()
    assert ledger.add_waiter(1) is None
