"""``corepool status --watch`` without a pool: rates and p99 from successive statuses, the plain frame."""

from __future__ import annotations

import io

from corepool import watch
from corepool.traffic import BUCKETS, bucket_index


def status(requests: int, fast: int, slow: int, deaths: dict[str, int] | None = None) -> dict[str, object]:
    buckets = [0] * (len(BUCKETS) + 1)
    buckets[bucket_index(0.004)] = fast
    buckets[bucket_index(0.4)] = slow
    return {
        "name": "shop", "pid": 1, "phase": "running", "generation": 3, "workers_ready": 1, "workers_wanted": 1,
        "requests": requests, "reloading": False,
        "last_reload": {"generation": 3, "ok": False, "reason": "rolled back: canary: p99 ...", "ago": 1.0},
        "workers": [{"pid": 42, "slot": 0, "generation": 3, "state": "ready", "uptime": 65.0, "requests": requests,
                     "inflight": 2, "busy_threads": 0, "threads": 0, "rss_bytes": 50 << 20, "last_pong_ago": 0.1,
                     "latency_buckets": buckets}],
        "slots": [{"slot": 0, "deaths": deaths or {}}],
    }


def test_rates_and_p99_come_from_the_difference_between_statuses() -> None:
    rates = watch.Rates(window=5.0)
    rates.add(status(1000, 1000, 0), now=0.0)
    assert rates.of(42) == (None, None)
    rates.add(status(1200, 1197, 3), now=2.0)
    rate, p99 = rates.of(42)
    assert rate == 100.0
    assert p99 is not None and 0.25 < p99 <= 0.5  # 3 of the last 200 took 0.4 s: the p99 is in their bucket
    rates.add(status(1300, 1297, 3), now=8.0)
    rate, p99 = rates.of(42)
    assert rate == 100 / 6  # the oldest sample kept is the one just inside the window
    assert p99 is not None and p99 <= 0.005
    rates.add({"workers": []}, now=9.0)
    assert rates.of(42) == (None, None), "a gone worker's history is dropped"


def test_the_plain_frame_has_every_column_and_the_unplanned_deaths() -> None:
    rates = watch.Rates()
    rates.add(status(10, 10, 0), now=0.0)
    rates.add(status(20, 20, 0), now=1.0)
    out = io.StringIO()
    assert watch.run(lambda: status(30, 30, 0, {"crash": 2, "reload": 5}), out=out, interval=0.0, frames=2) == 0
    frames = out.getvalue().strip().split("\n\n")
    assert len(frames) == 2
    head, columns, row = frames[1].splitlines()
    assert "ROLLED BACK: rolled back: canary" in head
    assert columns.split() == ["SLOT", "PID", "GEN", "STATE", "UPTIME", "REQ/S", "P99", "BUSY", "RSS", "LAST",
                               "PONG", "DEATHS"]
    assert row.split()[:4] == ["0", "42", "3", "ready"] and row.endswith("2 crash")
    assert "50.0M" in row
