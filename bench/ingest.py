"""Ingest throughput of a latency-bound site spread over several hosts: pages/s with per-host concurrency against a
sequential run, politeness per host, and re-index of the unchanged corpus against the first index.

    .venv/bin/python -m bench.ingest [--quick] [--pages 1000] [--latency 0.05] [--hosts 4]
                                     [--concurrency 16] [--per-host 8] [--page-batch 128]

The same generated site is served over loopback with a fixed latency per request by --hosts servers, on 127.0.0.1,
127.0.0.2, ... (Linux routes all of 127.0.0.0/8 to loopback; the fetcher's limits are per host name). The sitemap
puts page i on host i % hosts, and its relative image URLs resolve on that host. Every page has two paragraphs, a
unique figure and the site's logo in its <header> (which the parser drops as page chrome), so a first index makes 2
requests per page (page and figure) plus the sitemap, and embeds about 3 texts per page. Ratios are against baselines
measured in the same run.

Politeness is measured on the server side: each server records the most requests it had in flight at once during
each run, and so does the site over all hosts. The sequential run (1 request at a time) must show 1; the concurrent
runs at most --per-host per host and --concurrency over all hosts.

Before each timed run the bench waits until Prefect's temporary server is idle: after a large run
it keeps digesting that run's task-run events for a while, and a run timed meanwhile pays for the
previous one. The re-index is timed twice to show it: right after the first index (server still
busy), then with the server idle. "server CPU s" is what the server used during the run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from bench._run import index, isolate_prefect, prefect_server_cpu_s, wait_for_prefect_idle

from bench.corpus import (generate_site, in_flight_peaks, request_count, reset_in_flight_peaks, serve_hosts,
                          write_sitemap)
from bench.machine import load_average, machine_info

if TYPE_CHECKING:
    from mmrag.pipelines.summary import IndexSummary


class Run(NamedTuple):
    """One timed index run: what was asked and what was measured."""

    label: str
    per_host: int
    concurrency: int
    summary: IndexSummary
    wall: float
    requests: int
    server_cpu: float
    peaks: dict[str, int]  # most requests in flight at once, per host
    total_peak: int  # most requests in flight at once over all hosts


def fetch_seconds(summary) -> float:
    """Seconds spent in network stages (pages and images)."""
    return summary.stage_seconds.get("fetch", 0.0) + summary.stage_seconds.get("images", 0.0)


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--hosts", type=int, default=4, help="loopback hosts serving the site (127.0.0.1 ...)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--page-batch", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="200 pages")
    args = parser.parse_args()
    if args.quick:
        args.pages = 200
    return args


def timed_run(label: str, sitemap: str, work: Path, db: str, overrides: dict, page_batch: int) -> Run:
    """Index ``sitemap`` into ``work/db`` with ``overrides``, measuring time, requests and requests in flight."""
    before, server_before = request_count(), prefect_server_cpu_s()
    reset_in_flight_peaks()
    started = time.perf_counter()
    summary = index([sitemap], work, db, page_batch=page_batch, **overrides)
    wall = time.perf_counter() - started
    peaks, total_peak = in_flight_peaks()
    return Run(label, overrides["fetch.per_host_concurrency"], overrides["fetch.concurrency"], summary, wall,
               request_count() - before, prefect_server_cpu_s() - server_before, peaks, total_peak)


def measure(args: argparse.Namespace, work: Path, site: Path) -> tuple[list[Run], list[str]]:
    """Serve the site on ``args.hosts`` hosts and time the four runs; returns them and the hosts."""
    with serve_hosts(site, args.latency, args.hosts) as bases:
        hosts = [urlsplit(base).hostname for base in bases]
        sitemap = write_sitemap(site, bases)
        index([f"{bases[0]}/articles/a00000.html"], work, "warmup")  # Prefect's first flow start-up, model load
        concurrent = {"fetch.concurrency": args.concurrency, "fetch.per_host_concurrency": args.per_host}
        plan = [  # (label, database, overrides, wait for an idle Prefect server first)
            ("sequential first index", "seq", {"fetch.concurrency": 1, "fetch.per_host_concurrency": 1}, True),
            (f"concurrent first index ({args.per_host}/host)", "conc", concurrent, True),
            ("re-index, unchanged, right after (server busy)", "conc", concurrent, False),
            ("re-index, unchanged, server idle", "conc", concurrent, True),
        ]
        runs = []
        for label, db, overrides, idle in plan:
            if idle:
                print(f"{label}: waited {wait_for_prefect_idle():.0f}s for Prefect's server to go idle", flush=True)
            runs.append(timed_run(label, sitemap, work, db, overrides, args.page_batch))
    return runs, hosts


def print_report(runs: list[Run], hosts: list[str]) -> None:
    """The table of runs, their stage times, requests in flight per host, and the ratios."""
    print("\n| run | wall s | pages/s | network stages s | embed s | server CPU s | requests | "
          "most in flight: per host / all hosts | docs added/unchanged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        s = r.summary
        print(f"| {r.label} | {r.wall:.1f} | {s.pages_total / r.wall:.1f} | {fetch_seconds(s):.1f} | "
              f"{s.stage_seconds.get('embed', 0):.1f} | {r.server_cpu:.1f} | {r.requests} | "
              f"{max(r.peaks.values(), default=0)} / {r.total_peak} | {s.documents_added}/{s.documents_unchanged} |")
    for r in runs:
        print(f"  {r.label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.summary.stage_seconds.items()))
    print("\nmost requests in flight at once, server side (limits: per host / over all hosts):")
    for r in runs:
        per_host = ", ".join(f"{host} {r.peaks.get(host, 0)}" for host in hosts)
        print(f"  {r.label}: {per_host}; all hosts {r.total_peak} (limits {r.per_host} / {r.concurrency})")
    seq, conc, busy, again = runs
    print(f"\nconcurrent vs sequential over {len(hosts)} host(s): {seq.wall / conc.wall:.2f}x pages/s overall, "
          f"{fetch_seconds(seq.summary) / max(fetch_seconds(conc.summary), 1e-9):.2f}x in the network stages")
    print(f"re-index of the unchanged corpus / first index: {again.wall / conc.wall:.3f} (target <= 0.1); "
          f"right after the first index, server busy: {busy.wall / conc.wall:.3f}")


def main() -> None:
    """Run the bench (see the module docstring)."""
    args = parse_args()
    work = isolate_prefect()
    site = generate_site(work / "site", args.pages)
    print(machine_info())
    print(f"load average at start: {load_average()}")
    print(f"{args.pages} pages over {args.hosts} host(s), {args.latency * 1000:.0f} ms per request, page batch "
          f"{args.page_batch}; concurrent runs: {args.concurrency} requests in flight, {args.per_host} per host")
    runs, hosts = measure(args, work, site)
    print(f"load average at end: {load_average()}")
    print_report(runs, hosts)
    for r in runs:
        assert max(r.peaks.values(), default=0) <= r.per_host and r.total_peak <= r.concurrency, (r.label, r.peaks)
    for r in runs[2:]:
        assert r.summary.documents_unchanged == args.pages and r.summary.chunks_embedded == 0


if __name__ == "__main__":
    main()
