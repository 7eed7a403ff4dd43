"""Render the saved results into ``README.md`` (tables) and PNG plots (matplotlib)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import env
from bench.common import Settings, load
from bench.servers import GTHREAD_THREADS, SERVERS
from bench.stats import fmt, max_share_deviation, md_table, median_or_none, num, ratio, share_split

PEERS = {
    "asgi": ["gunicorn-uvicorn", "uvicorn", "granian", "nginx"],
    "wsgi": ["gunicorn-sync", "gunicorn-gthread", "granian", "nginx"],
}
LABEL = {
    "corepool-lazy": "corepool lazy",
    "corepool-preload": "corepool preload",
    "gunicorn-sync": "gunicorn sync",
    "gunicorn-gthread": "gunicorn gthread",
    "gunicorn-uvicorn": "gunicorn + UvicornWorker",
    "gunicorn-uvicorn-preload": "gunicorn --preload + UvicornWorker",
    "uvicorn": "uvicorn --workers",
    "granian": "granian",
    "nginx": "nginx static 200",
}
APPS = ["hello", "json", "wait"]
PATHS = {"hello": "/", "json": "/json", "wait": "/wait"}


def label(name: str) -> str:
    return LABEL.get(name, name)


def corepool_names(runs: Iterable[dict[str, Any]]) -> list[str]:
    found = {r["server"] for r in runs if r["server"].startswith("corepool-")}
    return [n for n in ("corepool-preload", "corepool-lazy") if n in found]


def main_corepool(runs: Iterable[dict[str, Any]]) -> str:
    """The mode the headline reports: preload when it was measured, else lazy."""
    names = corepool_names(runs)
    return names[0] if names else "corepool-lazy"


# ----------------------------------------------------------------------------------------------- throughput


def throughput_medians(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(interface, app, server) -> its runs; nginx's static runs are filed under both interfaces' hello."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r["interface"] == "static":
            out[("asgi", r["app"], r["server"])].append(r)
            out[("wsgi", r["app"], r["server"])].append(r)
        else:
            out[(r["interface"], r["app"], r["server"])].append(r)
    return out


def _rps(groups: dict[tuple[str, str, str], list[dict[str, Any]]], key: tuple[str, str, str]) -> float | None:
    return median_or_none([r["rps"] for r in groups.get(key, [])])


def throughput_headline(data: dict[str, Any]) -> str:
    groups = throughput_medians(data["runs"])
    ours = main_corepool(data["runs"])
    peers = ["gunicorn-sync", "gunicorn-gthread", "gunicorn-uvicorn", "uvicorn", "granian", "nginx"]
    rows = []
    for iface in ("asgi", "wsgi"):
        for app in APPS:
            mine = _rps(groups, (iface, app, ours))
            if mine is None:
                continue
            cells = [f"{iface.upper()} {app}", num(mine)]
            for peer in peers:
                cells.append(ratio(mine, _rps(groups, (iface, app, peer))) if peer in PEERS[iface] else "")
            rows.append(cells)
    headers = ["interface / app", f"{label(ours)} req/s", *[f"÷ {label(p)}" for p in peers]]
    return md_table(headers, rows)


def throughput_detail(data: dict[str, Any]) -> str:
    groups = throughput_medians(data["runs"])
    modes = corepool_names(data["runs"])
    out = []
    for iface in ("asgi", "wsgi"):
        for app in APPS:
            rows = []
            for name in [*modes, *PEERS[iface]]:
                runs = groups.get((iface, app, name), [])
                if not runs:
                    continue
                rps = [r["rps"] for r in runs]
                cells = [label(name), fmt(rps), fmt([r["p50_ms"] for r in runs], 2),
                         fmt([r["p99_ms"] for r in runs], 1),
                         str(sum(r["failed"] for r in runs))]  # fmt: skip
                for mode in modes:
                    cells.append(ratio(_rps(groups, (iface, app, mode)), statistics.median(rps)))
                rows.append(cells)
            if rows:
                headers = ["server", "req/s median (min-max)", "p50 ms", "p99 ms", "failed",
                           *[f"{label(m)} ÷ server" for m in modes]]  # fmt: skip
                out.append(f"**{iface.upper()} {app}** (`{PATHS[app]}`)\n\n"
                           + md_table(headers, rows))  # fmt: skip
    return "\n".join(out)


def throughput_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = throughput_medians(data["runs"])
    modes = corepool_names(data["runs"])
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for i, iface in enumerate(("asgi", "wsgi")):
        for j, app in enumerate(APPS):
            ax = axes[i][j]
            names = [n for n in [*modes, *PEERS[iface]] if groups.get((iface, app, n))]
            meds = [statistics.median(r["rps"] for r in groups[(iface, app, n)]) for n in names]
            lo = [m - min(r["rps"] for r in groups[(iface, app, n)]) for m, n in zip(meds, names, strict=True)]
            hi = [max(r["rps"] for r in groups[(iface, app, n)]) - m for m, n in zip(meds, names, strict=True)]
            colors = ["tab:green" if n.startswith("corepool") else "tab:gray" if n == "nginx" else "tab:blue"
                      for n in names]  # fmt: skip
            ax.bar(range(len(names)), meds, yerr=[lo, hi], color=colors, capsize=3)
            ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{iface.upper()} {app}")
            ax.set_ylabel("req/s (median, min-max)")
    fig.suptitle(f"Throughput, {data['workers']} workers, wrk -t{data['threads']} -c{data['connections']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- reload


def _by_server(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[r["server"]].append(r)
    return out


def _opt(values: list[float | None], digits: int = 2) -> str:
    present = [v for v in values if v is not None]
    missing = len(values) - len(present)
    text = fmt(present, digits) if present else "-"
    return text + (f" ({missing} incomplete)" if missing else "")


def answers(runs: list[dict[str, Any]]) -> str:
    """How many reloads corepool reported ok, and the reason of any that were not."""
    replies = [r.get("answer") or {} for r in runs]
    ok = sum(1 for a in replies if a.get("ok"))
    bad = sorted({a.get("reason", "no answer") for a in replies if not a.get("ok")})
    return f"{ok}/{len(runs)} ok" + (f"; {'; '.join(bad)}" if bad else "")


def reload_table(data: dict[str, Any]) -> str:
    rows = []
    for name, runs in _by_server(data["runs"]).items():
        rows.append([
            label(name), runs[0]["trigger"], str(sum(r["roll"]["failed"] for r in runs)),
            fmt([r["rest"]["p99_ms"] for r in runs], 1), fmt([r["roll"]["p99_ms"] for r in runs], 1),
            fmt([r["roll"]["p99_ms"] / r["rest"]["p99_ms"] for r in runs], 2),
            fmt([r["roll"]["max_ms"] for r in runs], 0), _opt([r["roll_s"] for r in runs]),
            _opt([r["answer_s"] for r in runs]) if name.startswith("corepool") else "",
            answers(runs) if name.startswith("corepool") else "",
        ])  # fmt: skip
    headers = ["server", "reload trigger", "failed (all reps)", "p99 at rest ms", "p99 in roll window ms",
               "p99 ratio", "max latency ms", "roll wall time s", "`reload --wait` answered after s",
               "corepool's answer"]  # fmt: skip
    return md_table(headers, rows)


def filled_timeline(timeline: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per-second rates from 100 ms buckets, with the buckets in which nothing succeeded drawn as zero."""
    if not timeline:
        return [], []
    ok = {round(t * 10): o for t, o, _ in timeline}
    first, last = min(ok), max(ok)
    xs = [b / 10 for b in range(first, last + 1)]
    return xs, [ok.get(b, 0) * 10.0 for b in range(first, last + 1)]


def reload_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    for name, runs in _by_server(data["runs"]).items():
        xs, ys = filled_timeline(runs[0]["timeline"])
        ax.plot(xs, ys, label=label(name), lw=1.2)
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("seconds since the reload was triggered")
    ax.set_ylabel("2xx responses per second (100 ms buckets)")
    ax.set_title(f"Rolling reload under load, {data['workers']} workers, app import {data['import_seconds']} s "
                 "(first repetition)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- crash


def crash_table(data: dict[str, Any]) -> str:
    rows = []
    for name, runs in _by_server(data["runs"]).items():
        served = [r["served_s"] * 1000 if r["served_s"] is not None else None for r in runs]
        spawned = [r["spawned_s"] * 1000 if r["spawned_s"] is not None else None for r in runs]
        rows.append([label(name), _opt(spawned, 0), _opt(served, 0), fmt([r["failed"] for r in runs], 0),
                     fmt([r["max_ms"] for r in runs], 0)])  # fmt: skip
    headers = ["server", "new worker pid seen after ms", "replacement serves after ms", "failed requests",
               "max latency ms"]  # fmt: skip
    return md_table(headers, rows)


# ----------------------------------------------------------------------------------------------- memory


def memory_table(data: dict[str, Any]) -> str:
    groups = _by_server(data["runs"])
    ref = groups.get("gunicorn-uvicorn-preload")

    def ref_median(point: str) -> float | None:
        return median_or_none([r[point]["pss_mib"] for r in ref if point in r]) if ref else None

    rows = []
    for name, runs in groups.items():
        pss = [r["loaded"]["pss_mib"] for r in runs]
        gc_pss = [r["collected"]["pss_mib"] for r in runs if "collected" in r]
        rows.append([label(name), fmt([r["idle"]["pss_mib"] for r in runs], 1), fmt(pss, 1),
                     ratio(statistics.median(pss), ref_median("loaded")), fmt(gc_pss, 1) if gc_pss else "-",
                     ratio(statistics.median(gc_pss), ref_median("collected")) if gc_pss else "-",
                     fmt([r["loaded"]["worker_pss_mib"] / data["workers"] for r in runs], 1),
                     str(runs[0]["loaded"]["processes"])])  # fmt: skip
    headers = ["server", "pool PSS idle MiB", "after load MiB", "÷ gunicorn --preload", "after a full gc in "
               "every worker MiB", "÷ gunicorn --preload", "PSS per worker after load MiB", "processes"]  # fmt: skip
    return md_table(headers, rows)


def memory_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_server(data["runs"])
    names = list(groups)
    meds = [statistics.median(r["loaded"]["pss_mib"] for r in groups[n]) for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(names)), meds, color=["tab:green" if n.startswith("corepool") else "tab:blue" for n in names])
    ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("pool PSS after load, MiB (median)")
    ax.set_title(f"Memory of the whole pool, {data['workers']} workers, FastAPI-sized app")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- startup


def startup_table(data: dict[str, Any]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in data["runs"]:
        groups[(r["app"], r["server"])].append(r)
    rows = []
    for (app, name), runs in groups.items():
        ready = [r["ready_s"] * 1000 for r in runs if r["ready_s"] is not None]
        rows.append([app, label(name), fmt([r["first_200_s"] * 1000 for r in runs], 0), fmt(ready, 0) if ready else ""])
    return md_table(["app", "server", "launch -> first 200 ms", "launch -> READY (status phase running) ms"], rows)


# ----------------------------------------------------------------------------------------------- fairness


def fairness_table(data: dict[str, Any]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in data["runs"]:
        groups[(r["interface"], r["server"])].append(r)
    rows = []
    for (iface, name), runs in groups.items():
        devs = [max_share_deviation(r["written"]) for r in runs]
        rows.append([label(name), iface, ", ".join(share_split(r["written"]) for r in runs), fmt(devs, 0),
                     "yes" if max(devs) <= 15 else "no", fmt([r["rps"] for r in runs], 0)])  # fmt: skip
    headers = ["server", "interface", "split per repetition (%)", "worst deviation from 1/N, % (median, min-max)",
               "within ±15 % in every rep", "req/s"]  # fmt: skip
    return md_table(headers, rows)


# ----------------------------------------------------------------------------------------------- goals


def goals_table(results: dict[str, dict[str, Any] | None]) -> str:
    rows: list[list[str]] = []
    tp = results.get("throughput")
    if tp:
        groups = throughput_medians(tp["runs"])
        ours = main_corepool(tp["runs"])
        for iface in ("asgi", "wsgi"):
            for app in APPS:
                mine = _rps(groups, (iface, app, ours))
                peer_rps = {p: _rps(groups, (iface, app, p)) for p in PEERS[iface] if p != "nginx"}
                peer_rps = {p: v for p, v in peer_rps.items() if v is not None}
                if mine is None or not peer_rps:
                    continue
                best = max(peer_rps, key=lambda p: peer_rps[p])
                r = mine / peer_rps[best]
                rows.append([f"throughput {iface.upper()} {app} ({label(ours)})", ">= 1.0x fastest peer",
                             f"{r:.2f}x {label(best)}", "yes" if r >= 1.0 else "no"])  # fmt: skip
    rl = results.get("reload")
    if rl:
        for name, runs in _by_server(rl["runs"]).items():
            if not name.startswith("corepool"):
                continue
            failed = sum(r["roll"]["failed"] for r in runs)
            p99r = statistics.median(r["roll"]["p99_ms"] / r["rest"]["p99_ms"] for r in runs)
            rolls = [r["roll_s"] for r in runs if r["roll_s"] is not None]
            bar = rl["import_seconds"] + 1.0
            roll = max(rolls) if rolls else None
            note = f", {len(runs) - len(rolls)} of {len(runs)} incomplete" if len(rolls) < len(runs) else ""
            rows += [
                [f"reload: failed requests ({label(name)})", "0", str(failed), "yes" if failed == 0 else "no"],
                [f"reload: p99 in roll ÷ at rest ({label(name)})", "<= 2x", f"{p99r:.2f}x (median)",
                 "yes" if p99r <= 2 else "no"],
                [f"reload: roll wall time, {rl['workers']} workers ({label(name)})", f"<= {bar:.1f} s",
                 f"{roll:.2f} s (worst completed{note})" if roll is not None else "incomplete",
                 "yes" if roll and roll <= bar and not note else "no"],
            ]  # fmt: skip
    cr = results.get("crash")
    if cr:
        for name, runs in _by_server(cr["runs"]).items():
            if name.startswith("corepool"):
                served = [r["served_s"] for r in runs if r["served_s"] is not None]
                worst = max(served) * 1000 if len(served) == len(runs) else None
                rows.append([f"crash -> replacement serving ({label(name)})", "<= 50 ms",
                             f"{worst:.0f} ms (worst)" if worst is not None else "not measured",
                             "yes" if worst is not None and worst <= 50 else "no"])  # fmt: skip
    mem = results.get("memory")
    if mem:
        groups_m = _by_server(mem["runs"])
        ref = groups_m.get("gunicorn-uvicorn-preload")
        for name, runs in groups_m.items():
            for point, when in (("loaded", "after load"), ("collected", "after a full gc")):
                if not name.startswith("corepool") or not ref or not all(point in x for x in runs + ref):
                    continue
                r = statistics.median(x[point]["pss_mib"] for x in runs) / statistics.median(
                    x[point]["pss_mib"] for x in ref)
                rows.append([f"pool PSS ÷ gunicorn --preload, {when} ({label(name)})", "<= 0.6x", f"{r:.2f}x",
                             "yes" if r <= 0.6 else "no"])  # fmt: skip
    fa = results.get("fairness")
    if fa:
        pairs = sorted({(r["server"], r["interface"]) for r in fa["runs"] if r["server"].startswith("corepool")})
        for name, iface in pairs:
            devs = [max_share_deviation(r["written"]) for r in fa["runs"]
                    if r["server"] == name and r["interface"] == iface]  # fmt: skip
            rows.append([f"worker share at c64 ({label(name)}, {iface.upper()})", "within ±15 % of 1/N",
                         f"worst {max(devs):.0f} %", "yes" if max(devs) <= 15 else "no"])  # fmt: skip
    return md_table(["goal", "bar", "measured", "met"], rows)


# ----------------------------------------------------------------------------------------------- the page


def _section(title: str, body: str) -> str:
    return f"\n## {title}\n\n{body}\n"


def write(settings: Settings, elapsed: float | None = None) -> Path:
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    results = {c: load(settings, c) for c in ("throughput", "reload", "crash", "memory", "startup", "fairness")}
    versions = env.versions()
    parts = [
        "# corepool benchmarks\n",
        "Generated by `python -m bench all` (see `bench/`); do not edit by hand."
        + (" **Smoke run (`--quick`): one repetition, tiny durations; not a measurement.**" if settings.quick else ""),
        "",
        f"- Machine: {env.machine()}.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
        "- corepool checkout measured (per case; `+dirty`: src/ had uncommitted work of the lead engineer): "
        + ", ".join(f"{c} at {d.get('checkout', '?')} (modes: {', '.join(d.get('corepool_modes', ['?']))})"
                    for c, d in results.items() if d) + ".",
        f"- Repetitions: {settings.reps} per case, the servers alternating (forwards on even repetitions, backwards "
        f"on odd ones); each cell is the median with min-max. Ratios are of medians measured in the same run.",
        f"- Load: `wrk -t2 -c64 --latency` for {settings.duration:g} s per measurement after a 1 s warm-up, against "
        "127.0.0.1. **wrk competes with the server for the same 2 cores**; every server gets the same wrk settings, "
        "so the ratios are fair, but absolute numbers are lower than on a dedicated load machine.",
        "- Workers: 2 (= cores) for throughput, crash, start-up and fairness; 4 for reload and memory, as the issue "
        "asks. The same app module for every server.",
        "- The machine is shared with other work (test suites); the load average after each case is in its section.",
        "",
    ]
    if elapsed is not None:
        parts.append(f"Full run took {elapsed / 60:.1f} min.\n")
    if results["throughput"]:
        parts += [_section("Headline: throughput ratios", "corepool's median req/s divided by each peer's, same "
                           "interface, same run.\n\n" + throughput_headline(results["throughput"]))]  # fmt: skip
    parts += [_section("Goals of issue 5", goals_table(results))]
    if results["throughput"]:
        throughput_plot(results["throughput"], out / "throughput.png")
        parts.append(_section("Throughput and latency", (
            "Apps: `bench/apps/basic.py` (`/` hello world, `/json` ~20-key JSON serialised per request, `/wait` a "
            "20 ms `asyncio.sleep` / `time.sleep`). ASGI peers: gunicorn with UvicornWorker (`uvicorn-worker` "
            "package; `uvicorn.workers` is deprecated), `uvicorn --workers` (uvloop, httptools), granian. WSGI peers: "
            f"gunicorn sync, gunicorn gthread ({GTHREAD_THREADS} threads, as many as corepool's WSGI thread pool), "
            "granian. "
            "nginx `return 200` is the ceiling (hello only). wrk timeout 2 s (a request slower than that counts as "
            f"failed). Load average after: {results['throughput'].get('loadavg_after', '?')}.\n\n"
            "![throughput](throughput.png)\n\n" + throughput_detail(results["throughput"]))))
    if results["reload"]:
        rl = results["reload"]
        rest_s, lead_s = (1, 1) if rl["settings"].get("quick") else (5, 2)
        reload_plot(rl, out / "reload.png")
        parts.append(_section("Rolling reload under load", (
            f"App `bench/apps/slowimport.py`: {rl['import_seconds']} s import, {rl['workers']} workers, ASGI. After "
            f"every worker has served, {rest_s} s of wrk at rest (the baseline p99), then a "
            f"{rl['window_s']:g} s wrk window (`--timeout 10s`) with the reload triggered {lead_s} s in. "
            "Roll wall time: from the trigger until every worker that replaced an old one has served its first "
            "request (each process writes a mark file on its first request; a side prober opens a fresh connection "
            "every 2 ms so new workers get one although wrk's keep-alive connections stick to their worker) and "
            "every old worker has exited. The p99 and max are over the whole window, which contains the roll. "
            "gunicorn: SIGHUP spawns the new workers and stops the old ones at once, not waiting for the new ones "
            "to import. uvicorn 0.54: SIGHUP replaces workers one at a time, each after its successor reports ready, "
            f"so the roll takes about workers x import. Load average after: {rl.get('loadavg_after', '?')}.\n\n"
            "![reload](reload.png)\n\n" + reload_table(rl))))
    if results["crash"]:
        cr = results["crash"]
        kill_s = 1 if cr["settings"].get("quick") else 1.5
        parts.append(_section("kill -9 one worker under load", (
            f"{cr['workers']} workers, hello ASGI app, wrk for {cr['window_s']:g} s (`--timeout 5s`), SIGKILL to one "
            f"worker {kill_s} s in. \"Serves\": the replacement's first request (mark file), reached by a side "
            "prober that "
            "opens a fresh connection every 2 ms. Failed requests are those in flight or queued on the killed "
            "worker's connections (wrk reconnects). granian runs with `--respawn-failed-workers --respawn-interval 0`; "
            "uvicorn's supervisor checks its workers every 0.5 s. "
            f"Load average after: {cr.get('loadavg_after', '?')}.\n\n"
            + crash_table(cr))))
    if results["memory"]:
        mem = results["memory"]
        memory_plot(mem, out / "memory.png")
        parts.append(_section("Memory", (
            f"`bench/apps/big.py` (FastAPI, 200 pydantic models, 400 routes, a 20 000-entry in-memory catalogue), "
            f"{mem['workers']} workers. PSS summed from `/proc/PID/smaps_rollup` over the whole pool: the process "
            "we started and all its descendants (master, loaders, workers, helpers). \"Idle\" once every worker has "
            "served; \"after load\" after a wrk run on `/items` (validates and serialises 50 models a request); "
            "\"after a full gc\" once every worker also ran `gc.collect()` (`/collect`), as a long-running "
            "worker does now and then — the collection that unshares copy-on-write pages unless `gc.freeze()` "
            "took the objects out of its reach. "
            f"Load average after: {mem.get('loadavg_after', '?')}.\n\n![memory](memory.png)\n\n" + memory_table(mem))))
    if results["startup"]:
        st = results["startup"]
        parts.append(_section("Start-up", (
            f"{st['workers']} workers. From `Popen` to the first 200 on `/` (a fresh connection every 2 ms), and for "
            "corepool to its status phase `running` (every worker ready; what it reports to systemd as READY=1). "
            f"`fastapi` is the memory case's app. Load average after: {st.get('loadavg_after', '?')}.\n\n"
            + startup_table(st))))
    if results["fairness"]:
        fa = results["fairness"]
        parts.append(_section("Fairness across workers", (
            f"{fa['workers']} workers, wrk `-c{fa['connections']}` keep-alive on the hello app. Each worker's share "
            "is its bytes written (`wchar` in `/proc/PID/io`) during the run: responses are all the same size, so "
            "this is its share of requests. Goal: every share within ±15 % of 1/N (here 42.5-57.5 %). "
            f"Load average after: {fa.get('loadavg_after', '?')}.\n\n" + fairness_table(fa))))
    notes = [f"- {name}: {desc}" for name, (_, desc) in SERVERS.items()]
    parts.append(_section("Servers", "\n".join(notes)))
    path = out / "README.md"
    path.write_text("\n".join(parts).rstrip() + "\n")
    return path
