"""The Prometheus endpoint: the pool's counters, served by the primary on a socket of its own.

Workers send cumulative counts with every pong (:mod:`corepool.traffic`); :class:`Counters` keeps each live
worker's latest report and adds a worker's last report to the retired totals once it is gone, so the pool's
counters never go down across worker replacement. A scrape first pings every worker (as ``corepool status``
does) and is answered once they have answered, or after a short wait: the counts are as fresh as a pong.

The endpoint is a socket named ``metrics`` (a systemd socket with ``FileDescriptorName=metrics``, or
``--bind metrics=ADDR``) or the ``metrics_bind`` address. It is never handed to workers: the primary closes it
in every process it forks. :class:`MetricsServer` is a small non-blocking HTTP/1.x responder the primary's
``selectors`` loop drives; the exposition is prometheus-client's text format, from a custom collector (no
multiprocess mode, no files).
"""

from __future__ import annotations

import selectors
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from corepool import endpoint, listeners, traffic
from corepool.crashpolicy import Cause
from corepool.traffic import Traffic

if TYPE_CHECKING:
    from corepool.policy import Policy
    from corepool.relay import Relay

NAME = "metrics"  # the socket name that makes a listener the metrics endpoint
MAX_CONNECTIONS = 8  # scrapers at once; beyond, the oldest connection is closed
BACKLOG = 16
# What generate_latest() writes: the classic text format, which every Prometheus (2.x included) parses.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


# --------------------------------------------------------------------------------------------- counters


@dataclass
class Counters:
    """The pool's monotonic totals, fed by the primary as it reads pongs and carries out the policy's actions."""

    live: dict[int, Traffic] = field(default_factory=dict)  # wid -> its latest report
    connections: dict[int, int] = field(default_factory=dict)  # wid -> open connections at its latest report
    retired: Traffic = field(default_factory=Traffic)
    deaths: dict[Cause, int] = field(default_factory=lambda: dict.fromkeys(Cause, 0))
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    canary: dict[str, int] = field(default_factory=lambda: {"pass": 0, "rollback": 0})

    def report(self, wid: int, counts: Traffic | None, connections: object = None) -> None:
        """A worker's pong: its cumulative counts replace its previous report."""
        if counts is not None:
            self.live[wid] = counts
        if isinstance(connections, int) and not isinstance(connections, bool):
            self.connections[wid] = connections

    def retire(self, wid: int) -> None:
        """A worker is gone: its last report joins the totals (nothing per worker is kept: no growth)."""
        last = self.live.pop(wid, None)
        if last is not None:
            self.retired = self.retired + last
        self.connections.pop(wid, None)

    def settle(self, alive: Mapping[int, object]) -> None:
        """Move the last report of every worker no longer in ``alive`` (wid -> anything) into the totals."""
        for wid in [wid for wid in (*self.live, *self.connections) if wid not in alive]:
            self.retire(wid)

    def total(self) -> Traffic:
        return traffic.combine([self.retired, *self.live.values()])

    def ended(self, cause: Cause) -> None:
        """A worker's end (the policy's :class:`~corepool.events.WorkerEnded`)."""
        self.deaths[cause] += 1

    def judged(self, ok: bool) -> None:
        """A canary's verdict (the policy's :class:`~corepool.events.CanaryJudged`)."""
        self.canary["pass" if ok else "rollback"] += 1

    def reload_finished(self, ok: bool) -> None:
        self.reloads["ok" if ok else "failed"] += 1


# ------------------------------------------------------------------------------------------- exposition


@dataclass(frozen=True)
class Broadcasts:
    relayed: int = 0
    dropped: int = 0
    backend_up: int | None = None  # the cross-host backend (Redis): 1 connected, 0 not; None: local only

    @classmethod
    def of(cls, relay: Relay, backend: dict[str, Any]) -> Broadcasts:
        """The relay's counts (``relayed``, ``dropped``) and the backend's ``status()``."""
        up = None if backend["backend"] == "local" else int(bool(backend.get("connected")))
        return cls(relay.relayed, relay.dropped, up)


class _PoolCollector:
    """prometheus-client's custom-collector protocol: ``collect()`` yields metric families."""

    def __init__(self, policy: Policy, counters: Counters, broadcasts: Broadcasts, rss: Callable[[int | None],
                 int | None]) -> None:
        self.policy, self.counters, self.broadcasts, self.rss = policy, counters, broadcasts, rss

    def collect(self) -> Iterator[Metric]:
        p, c = self.policy, self.counters
        total = c.total()
        requests = CounterMetricFamily("corepool_requests", "HTTP requests finished, by method and status class",
                                       labels=["method", "status_class"])
        for method in sorted(traffic.METHODS | {"other"}):
            for cls_ in traffic.STATUS_CLASSES:
                n = total.requests.get((method, cls_), 0)
                if n or (method == "GET" and cls_ in ("2xx", "5xx")):  # the usual series exist from the start
                    requests.add_metric([method, cls_], n)
        yield requests
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*traffic.BUCKETS, float("inf")), total.buckets, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else _float(bound), running))
        yield HistogramMetricFamily("corepool_request_duration_seconds",
                                    "Time from a request's start to the app's last response byte",
                                    buckets=buckets, sum_value=total.seconds)
        live = [w for w in p.workers.values() if w.pid is not None]
        yield _gauge("corepool_requests_in_flight", "Requests being served now", sum(w.inflight for w in live))
        yield _gauge("corepool_connections_open", "Open client connections held by workers",
                     sum(c.connections.values()))
        yield _gauge("corepool_wsgi_threads_busy", "WSGI app threads running a request",
                     sum(w.busy_threads for w in live))
        yield _gauge("corepool_wsgi_threads", "WSGI app threads", sum(w.threads for w in live))
        deaths = CounterMetricFamily("corepool_worker_deaths", "Worker ends by cause", labels=["cause"])
        for cause, n in sorted(c.deaths.items(), key=lambda item: item[0].value):
            deaths.add_metric([cause.value], n)
        yield deaths
        reloads = CounterMetricFamily("corepool_reloads", "Reloads by result (failed: rolled back)", labels=["result"])
        for result, n in sorted(c.reloads.items()):
            reloads.add_metric([result], n)
        yield reloads
        canary = CounterMetricFamily("corepool_canary_verdicts", "Canary verdicts of reloads", labels=["verdict"])
        for verdict, n in sorted(c.canary.items()):
            canary.add_metric([verdict], n)
        yield canary
        broadcasts = CounterMetricFamily("corepool_broadcast_messages", "Broadcast messages sent to a worker, "
                                         "or dropped (over a bound or a rate limit)", labels=["result"])
        broadcasts.add_metric(["sent"], self.broadcasts.relayed)
        broadcasts.add_metric(["dropped"], self.broadcasts.dropped)
        yield broadcasts
        if self.broadcasts.backend_up is not None:
            yield _gauge("corepool_broadcast_backend_up", "1 while the cross-host broadcast backend (Redis) is "
                         "connected; broadcasts reach this host's workers only while 0", self.broadcasts.backend_up)
        rss = GaugeMetricFamily("corepool_worker_rss_bytes", "Resident memory of each worker",
                                labels=["slot", "generation", "pid"])
        for w in sorted(live, key=lambda w: (w.slot, w.wid)):
            value = self.rss(w.pid)
            if value is not None:
                rss.add_metric([str(w.slot), str(w.generation), str(w.pid)], value)
        yield rss
        states = GaugeMetricFamily("corepool_workers", "Workers by state", labels=["state"])
        for state in ("booting", "ready", "draining"):
            states.add_metric([state], sum(1 for w in p.workers.values() if w.state.value == state))
        yield states
        yield _gauge("corepool_workers_wanted", "Workers the pool is configured to run", p.workers_wanted)
        yield _gauge("corepool_generation", "The generation of the app the pool serves", p.generation)
        yield _gauge("corepool_reloading", "1 while a reload rolls", 1 if p.reloading else 0)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _float(bound: float) -> str:
    return repr(float(bound))


def render(policy: Policy, counters: Counters, broadcasts: Broadcasts,
           rss: Callable[[int | None], int | None]) -> bytes:
    """The exposition in Prometheus' text format (with the primary's own process_* metrics)."""
    counters.settle(policy.workers)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PoolCollector(policy, counters, broadcasts, rss))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


# --------------------------------------------------------------------------------------------- endpoint


def take_listener(found: list[listeners.Listener]) -> tuple[listeners.Listener | None, list[listeners.Listener]]:
    """Split off the socket named ``metrics`` (it must never reach a worker); the rest serve the app."""
    return endpoint.take_listener(found, NAME)


Respond = Callable[[bytes], None]


class MetricsServer(endpoint.Endpoint):
    """Answers ``GET /metrics`` on one listening socket, driven by the primary's selector.

    ``on_scrape(respond)`` is called for each scrape; the primary calls ``respond(body)`` once the workers'
    counts are fresh (it may do so at once). Connections are closed after each answer.
    """

    max_connections = MAX_CONNECTIONS
    backlog = BACKLOG

    def __init__(self, selector: selectors.BaseSelector, on_scrape: Callable[[Respond], None],
                 listener: listeners.Listener | None = None, bind: str | None = None) -> None:
        super().__init__(selector, listener, bind)
        self.on_scrape = on_scrape

    def request(self, path: bytes, respond: endpoint.Respond) -> None:
        if path not in (b"/metrics", b"/"):
            respond(404, b"the metrics are at /metrics\n", endpoint.TEXT)
        else:
            self.on_scrape(lambda body: respond(200, body, CONTENT_TYPE))
