"""The spool store and its keeper, without threads: a real SQLite file, a fake clock."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from analytics_queue._ledger import REPLAYED, Pending
from analytics_queue._spool import Row, Spool, SpoolError, move_aside
from analytics_queue._spool_keeper import RETRY_AFTER, SpoolKeeper
from analytics_queue.metrics import SPOOL_CRITICAL_AGE, Counters, Metrics, evaluate_health


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def events(n: int, start: int = 0, size: int = 20) -> list[tuple[bytes, float]]:
    return [(f"{i:0{size}d}".encode(), float(i)) for i in range(start, start + n)]


def spool(path: Path, clock: Clock, owner: str = "host:1", **kw: object) -> Spool:
    kw.setdefault("max_bytes", 10**9)
    return Spool(path, clock=clock, owner=owner, alive=lambda pid: True, **kw)  # type: ignore[arg-type]


def batches(*sizes: int, size: int = 20) -> list[list[tuple[bytes, float]]]:
    """Batches of the given sizes, numbered on from 0 across them."""
    out, start = [], 0
    for n in sizes:
        out.append(events(n, start=start, size=size))
        start += n
    return out


def flat(rows: list[Row]) -> list[tuple[bytes, float]]:
    return [event for row in rows for event in row.events]


def test_batches_come_back_oldest_first_with_their_bytes_and_times(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock())
    ids, dropped = store.add(batches(2, 3, 1), lease=False)
    assert dropped == 0 and ids == sorted(ids) and len(set(ids)) == 3
    first = store.claim(5)  # whole rows only: 2 + 3 fit, the third does not
    assert flat(first) == events(5)
    assert flat(store.claim(5)) == events(1, start=5)
    assert store.stats().rows == 6


def test_a_claim_takes_one_whole_row_even_past_the_limits(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock())
    store.add(batches(10, 1), lease=False)
    assert [len(r.events) for r in store.claim(4, max_bytes=10)] == [10]


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    spool(tmp_path / "s.db", Clock()).add(batches(1), lease=False)
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_acknowledged_rows_are_gone_and_ids_are_never_reused(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock())
    ids, _ = store.add(batches(3, 2), lease=True)
    store.ack(ids)
    assert store.stats().rows == 0
    again, _ = store.add(batches(1), lease=False)
    assert again[0] > max(ids)


def test_a_row_can_be_rewritten_with_what_is_left_of_it(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock())
    [row], _ = store.add(batches(4), lease=True)
    store.replace(row, events(4)[2:])  # two were delivered
    assert flat(store.claim(10)) == events(4)[2:]


def test_two_holders_never_claim_the_same_row(tmp_path: Path) -> None:
    clock = Clock()
    a = spool(tmp_path / "s.db", clock, owner="host:1")
    b = spool(tmp_path / "s.db", clock, owner="host:2")
    a.add(batches(*[1] * 10), lease=False)
    first, second, third = a.claim(4), b.claim(4), a.claim(4)
    ids = [r.id for r in first + second + third]
    assert len(ids) == len(set(ids)) == 10
    assert b.claim(4) == []  # every row is leased


def test_rows_written_leased_are_not_claimable_until_released(tmp_path: Path) -> None:
    clock = Clock()
    a = spool(tmp_path / "s.db", clock, owner="host:1")
    b = spool(tmp_path / "s.db", clock, owner="host:2")
    ids, _ = a.add(batches(3), lease=True)
    assert b.claim(10) == []
    a.release(ids)
    assert [r.id for r in b.claim(10)] == ids


def test_an_expired_lease_lets_others_take_the_rows(tmp_path: Path) -> None:
    clock = Clock()
    a = spool(tmp_path / "s.db", clock, owner="host:1", lease=30.0)
    b = spool(tmp_path / "s.db", clock, owner="host:2", lease=30.0)
    a.add(batches(2), lease=True)
    clock.now += 29
    assert b.claim(10) == []
    clock.now += 2
    assert len(flat(b.claim(10))) == 2


def test_renew_extends_the_lease(tmp_path: Path) -> None:
    clock = Clock()
    a = spool(tmp_path / "s.db", clock, owner="host:1", lease=30.0)
    b = spool(tmp_path / "s.db", clock, owner="host:2", lease=30.0)
    ids, _ = a.add(batches(2), lease=True)
    clock.now += 20
    a.renew(ids)
    clock.now += 20
    assert b.claim(10) == []


def test_rows_of_a_dead_process_of_this_host_are_free_at_once(tmp_path: Path) -> None:
    clock = Clock()
    dead = spool(tmp_path / "s.db", clock, owner="web1:4242")
    dead.add(batches(3), lease=True)
    other_host = Spool(
        tmp_path / "s.db", max_bytes=10**9, clock=clock, owner="web2:7", alive=lambda p: False
    )
    assert other_host.claim(10) == []  # another host's pid says nothing here: wait for the lease
    same_host = Spool(
        tmp_path / "s.db", max_bytes=10**9, clock=clock, owner="web1:7", alive=lambda p: p != 4242
    )
    assert len(flat(same_host.claim(10))) == 3


def test_past_the_bound_the_oldest_rows_go_and_are_counted(tmp_path: Path) -> None:
    store = spool(tmp_path / "s.db", Clock(), max_bytes=64 * 1024)
    total_dropped = 0
    for start in range(0, 2000, 20):
        _, dropped = store.add([events(20, start=start, size=300)], lease=False)
        total_dropped += dropped
    stats = store.stats()
    assert total_dropped > 0
    assert stats.rows + total_dropped == 2000
    assert stats.bytes <= 64 * 1024
    newest = flat(store.claim(10_000, max_bytes=10**9))
    assert newest[-1][1] == 1999.0  # the newest stay, the oldest went
    assert newest[0][1] == float(total_dropped)
    assert stats.oldest_tracked_at == float(total_dropped)


def test_a_file_that_is_not_a_database_is_reported_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SpoolError) as caught:
        spool(path, Clock())
    assert caught.value.kind == "corrupt"


def test_a_path_on_a_read_only_file_system_is_reported_read_only() -> None:
    # procfs refuses new files to every user, root included.
    with pytest.raises(SpoolError) as caught:
        Spool("/proc/analytics-spool-test.db", max_bytes=10**6)
    assert caught.value.kind == "read_only"


def test_move_aside_renames_the_file_and_its_companions(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").write_bytes(b"x")
    moved = move_aside(path)
    assert not path.exists() and moved.exists() and Path(f"{moved}-wal").exists()
    assert moved.name.startswith("s.db.broken-")


# -- the keeper ---------------------------------------------------------------------------------


def pendings(n: int, start: int = 0) -> list[Pending]:
    return [Pending(i, f'{{"n":{i}}}'.encode(), float(i)) for i in range(start, start + n)]


def keeper(path: Path, clock: Clock | None = None, **kw: object) -> SpoolKeeper:
    kw.setdefault("max_bytes", 10**9)
    kw.setdefault("lease", 60.0)
    clock = clock or Clock()
    return SpoolKeeper(str(path), clock=clock, monotonic=clock, **kw)  # type: ignore[arg-type]


def test_keeper_writes_ahead_then_hands_over_then_replays(tmp_path: Path) -> None:
    k = keeper(tmp_path / "s.db")
    sent = k.write_ahead(pendings(3))
    assert all(p.row is not None for p in sent)
    assert k.claim(10) == []  # leased by the write-ahead
    assert k.keep(sent) == []
    replayed = k.claim(10)
    assert [p.data for p in replayed] == [p.data for p in pendings(3)]
    assert all(p.seq == REPLAYED for p in replayed)
    k.ack(replayed)
    k.settle()
    k.refresh(force=True)
    assert k.figures().rows == 0 and k.figures().active


def test_keeper_deletes_acknowledged_rows_with_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    k = keeper(path)
    first = k.write_ahead(pendings(3))
    k.ack(first)

    def rows() -> list[int]:
        with sqlite3.connect(path) as db:
            return [r for (r,) in db.execute("SELECT id FROM batches ORDER BY id")]

    assert rows() == [first[0].row]  # not yet: one commit per batch
    second = k.write_ahead(pendings(2, start=3))
    assert rows() == [second[0].row]
    k.ack(second)
    k.close()  # closing settles what was acknowledged
    assert rows() == []


def test_keeper_moves_a_corrupt_file_aside_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"garbage" * 1000)
    k = keeper(path)
    assert k.keep(pendings(2)) == []
    figures = k.figures()
    assert figures.active and figures.moved_to is not None
    assert Path(figures.moved_to).read_bytes() == b"garbage" * 1000
    assert len(k.claim(10)) == 2


def test_keeper_on_a_read_only_path_keeps_events_in_memory_and_says_why() -> None:
    clock = Clock()
    k = keeper(Path("/proc/analytics-spool-test.db"), clock)
    given = pendings(2)
    assert k.write_ahead(given) == given
    assert k.keep(given) == given
    assert k.claim(10) == [] and k.waiting() == 0
    figures = k.figures()
    assert not figures.active and figures.problem and "read_only" in figures.problem


def test_keeper_retries_a_failed_file_later(tmp_path: Path) -> None:
    clock = Clock()
    blocker = tmp_path / "dir"
    blocker.write_text("a file where the spool's directory should be")
    k = keeper(blocker / "s.db", clock)
    assert k.keep(pendings(1)) == pendings(1)
    assert not k.figures().active
    blocker.unlink()
    blocker.mkdir()
    assert k.keep(pendings(1)) == pendings(1)  # not yet: the retry waits
    clock.now += RETRY_AFTER + 1
    assert k.keep(pendings(1)) == []
    assert k.figures().active and k.figures().problem is None


def test_keeper_counts_rows_the_bound_dropped(tmp_path: Path) -> None:
    k = keeper(tmp_path / "s.db", max_bytes=32 * 1024)
    big = [Pending(i, b"x" * 500, float(i)) for i in range(300)]
    assert k.keep(big) == []
    assert k.figures().dropped.get("spool_full", 0) > 0


# -- health -------------------------------------------------------------------------------------


def spool_metrics(**spool: object) -> Metrics:
    figures: dict[str, object] = {
        "path": "/x",
        "active": True,
        "rows": 0,
        "bytes": 0,
        "max_bytes": 1000,
        "oldest_age_s": None,
        "dropped": {},
        "problem": None,
        "moved_to": None,
    }
    figures.update(spool)
    return dataclasses.replace(
        Counters().snapshot(queued=0, queue_size=0, worker_alive=True), spool=figures
    )


def test_health_is_degraded_while_events_wait_in_the_spool() -> None:
    health = evaluate_health(spool_metrics(rows=40, oldest_age_s=12.0), mode="posthog")
    assert health.status == "degraded"
    assert [(r.code, r.message) for r in health.reasons] == [
        ("spool_waiting", "40 events wait in the spool, the oldest 12 s old")
    ]


@pytest.mark.parametrize(
    "spool",
    [
        {"rows": 5, "oldest_age_s": SPOOL_CRITICAL_AGE + 1},
        {"rows": 5, "oldest_age_s": 1.0, "bytes": 950},
    ],
)
def test_health_is_critical_past_an_age_or_size(spool: dict[str, object]) -> None:
    assert evaluate_health(spool_metrics(**spool), mode="posthog").status == "critical"


def test_health_says_when_the_spool_is_unusable_or_dropped_events() -> None:
    health = evaluate_health(
        spool_metrics(active=False, problem="spool full: disk", dropped={"spool_full": 3}),
        mode="posthog",
    )
    assert health.status == "degraded"
    messages = {r.code: r.message for r in health.reasons}
    assert messages["spool_unusable"] == "spool full: disk; events are kept in memory only"
    assert messages["spool_dropped"] == "the spool dropped its 3 oldest events (size bound)"


def test_an_empty_working_spool_is_healthy() -> None:
    assert evaluate_health(spool_metrics(), mode="posthog").status == "healthy"


def test_keeper_keeps_only_what_is_not_final_of_a_partly_delivered_batch(
    tmp_path: Path,
) -> None:
    k = keeper(tmp_path / "s.db")
    sent = k.write_ahead(pendings(4))
    k.ack(sent[:2])  # a 413 split: the first half was delivered, the second failed
    assert k.keep(sent[2:]) == []
    assert [p.data for p in k.claim(10)] == [p.data for p in pendings(4)[2:]]
