"""The bench's pure parts: wrk output parsing and the median / min-max / ratio rendering. No servers."""

from __future__ import annotations

import pytest
from bench import stats, wrk

WRK_OUT = """Running 5s test @ http://127.0.0.1:8000/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.92ms  52.61ms   91.23%
    Req/Sec    10.61k     1.02k   12.40k    70.00%
  Latency Distribution
     50%  812.00us
     75%    3.41ms
     90%    4.80ms
     99%    1.20s
  105570 requests in 5.00s, 13.49MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  21111.71
Transfer/sec:      2.70MB
"""


def test_to_ms_units() -> None:
    assert wrk.to_ms("812.00us") == pytest.approx(0.812)
    assert wrk.to_ms("3.41ms") == pytest.approx(3.41)
    assert wrk.to_ms("1.20s") == pytest.approx(1200.0)
    assert wrk.to_ms("1.50m") == pytest.approx(90_000.0)
    with pytest.raises(ValueError):
        wrk.to_ms("12parsecs")


def test_parse_wrk_full_output() -> None:
    res = wrk.parse_wrk(WRK_OUT)
    assert res.rps == pytest.approx(21111.71)
    assert res.p50_ms == pytest.approx(0.812)
    assert res.p99_ms == pytest.approx(1200.0)
    assert res.max_ms == pytest.approx(52.61)
    assert res.requests == 105570
    assert (res.connect_errors, res.read_errors, res.write_errors, res.timeouts, res.non2xx) == (1, 2, 3, 4, 5)
    assert res.failed == 15
    assert res.timeline == []


def test_parse_wrk_without_errors_and_with_timeline() -> None:
    out = "\n".join(line for line in WRK_OUT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    out += "\nTL 123456781 900 0\nTL 123456780 1000 2\nMAXLAT_US 2500000\n"
    res = wrk.parse_wrk(out)
    assert res.failed == 0
    assert res.max_ms == pytest.approx(2500.0)  # the Lua script's exact max wins over the rounded summary
    assert res.timeline == [(12345678.0, 1000, 2), (12345678.1, 900, 0)]


def test_parse_wrk_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        wrk.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_command_is_bounded_and_local() -> None:
    cmd = wrk.command(8000, "/json", duration=0.4, connections=64, threads=2, timeout_s=10)
    assert cmd[1:5] == ["-t2", "-c64", "-d1s", "--timeout=10s"]
    assert cmd[-1] == "http://127.0.0.1:8000/json"


def test_summary_and_fmt() -> None:
    s = stats.Summary.of([3.0, 1.0, 2.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert stats.fmt([21000.0, 20500.4, 22100.0]) == "21\u202f000 (20\u202f500-22\u202f100)"
    assert stats.fmt([1.234], 2) == "1.23"
    assert stats.fmt([]) == "-"
    with pytest.raises(ValueError):
        stats.Summary.of([])


def test_ratio() -> None:
    assert stats.ratio(150.0, 100.0) == "1.50x"
    assert stats.ratio(1.0, 0.0) == "-"
    assert stats.ratio(None, 3.0) == "-"


def test_shares() -> None:
    assert stats.share_split([40.0, 60.0]) == "60/40"
    assert stats.max_share_deviation([40.0, 60.0]) == pytest.approx(20.0)
    assert stats.max_share_deviation([50.0, 50.0]) == pytest.approx(0.0)
    assert stats.share_split([0.0, 0.0]) == "-"


def test_md_table_escapes_pipes() -> None:
    table = stats.md_table(["a", "b"], [["1", "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_report_tables_from_results() -> None:
    from bench import report

    runs = []
    for rep, (ours, peer) in enumerate([(110.0, 100.0), (120.0, 90.0), (100.0, 110.0)]):
        for server, rps in (("corepool-preload", ours), ("uvicorn", peer), ("corepool-lazy", 50.0)):
            runs.append({"rep": rep, "interface": "asgi", "app": "hello", "server": server, "rps": rps,
                         "p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0, "failed": 0})  # fmt: skip
    data = {"workers": 2, "threads": 2, "connections": 64, "runs": runs}
    headline = report.throughput_headline(data)
    assert "| ASGI hello | 110 |" in headline  # preload is the headline mode; median of its runs
    assert "1.10x" in headline  # 110 / median(100, 90, 110) = 110 / 100
    detail = report.throughput_detail(data)
    assert "110 (100-120)" in detail
    goals = report.goals_table({"throughput": data})
    assert "1.10x uvicorn --workers | yes" in goals


def test_filled_timeline_shows_gaps_as_zero() -> None:
    from bench import report

    xs, ys = report.filled_timeline([[-0.1, 5, 0], [0.2, 7, 1]])
    assert xs == pytest.approx([-0.1, 0.0, 0.1, 0.2])
    assert ys == [50.0, 0.0, 0.0, 70.0]
