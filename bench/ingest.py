"""Ingest throughput: pages/s with per-host concurrency against a sequential run, and re-index of the
unchanged corpus against the first index, over a loopback site with a fixed latency per request.

    .venv/bin/python -m bench.ingest [--quick] [--pages 1000] [--latency 0.05]

Every page has two paragraphs, a unique figure and the site's logo, so a first index makes about
3 requests and embeds about 3 texts per page. Ratios are against baselines measured in the same run.

Before each timed run the bench waits until Prefect's temporary server is idle: after a large run
it keeps digesting that run's task-run events for a while, and a run timed meanwhile pays for the
previous one. The re-index is timed twice to show it: right after the first index (server still
busy), then with the server idle. "server CPU s" is what the server used during the run.
"""

from __future__ import annotations

import argparse
import os
import time

from bench._run import index, isolate_prefect, prefect_server_cpu_s, wait_for_prefect_idle

from bench.corpus import generate_site, request_count, serve_site, write_sitemap
from bench.machine import machine_info


def fetch_seconds(summary) -> float:
    """Seconds spent in network stages (pages and images)."""
    return summary.stage_seconds.get("fetch", 0.0) + summary.stage_seconds.get("images", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--page-batch", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="200 pages")
    args = parser.parse_args()
    if args.quick:
        args.pages = 200
    work = isolate_prefect()
    site = generate_site(work / "site", args.pages)
    print(machine_info())
    print("load average at start: " + " / ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"{args.pages} pages, {args.latency * 1000:.0f} ms per request, page batch {args.page_batch}")
    rows = []
    with serve_site(site, args.latency) as base:
        sitemap = write_sitemap(site, base)
        index([f"{base}/articles/a00000.html"], work, "warmup")  # Prefect's first flow start-up, model load
        concurrent = {"fetch.concurrency": args.concurrency, "fetch.per_host_concurrency": args.per_host}
        runs = [  # (label, database, overrides, wait for an idle Prefect server first)
            ("sequential first index", "seq", {"fetch.concurrency": 1, "fetch.per_host_concurrency": 1}, True),
            (f"concurrent first index ({args.per_host}/host)", "conc", concurrent, True),
            ("re-index, unchanged, right after (server busy)", "conc", concurrent, False),
            ("re-index, unchanged, server idle", "conc", concurrent, True),
        ]
        for label, db, overrides, idle in runs:
            if idle:
                print(f"{label}: waited {wait_for_prefect_idle():.0f}s for Prefect's server to go idle", flush=True)
            before, server_before = request_count(), prefect_server_cpu_s()
            started = time.perf_counter()
            summary = index([sitemap], work, db, page_batch=args.page_batch, **overrides)
            wall = time.perf_counter() - started
            rows.append((label, summary, wall, request_count() - before, prefect_server_cpu_s() - server_before))
    print("load average at end: " + " / ".join(f"{x:.1f}" for x in os.getloadavg()))
    print("\n| run | wall s | pages/s | network stages s | embed s | server CPU s | requests | docs added/unchanged |")
    print("|---|---|---|---|---|---|---|---|")
    for label, s, wall, requests, server_cpu in rows:
        print(f"| {label} | {wall:.1f} | {s.pages_total / wall:.1f} | {fetch_seconds(s):.1f} | "
              f"{s.stage_seconds.get('embed', 0):.1f} | {server_cpu:.1f} | {requests} | "
              f"{s.documents_added}/{s.documents_unchanged} |")
    for label, s, *_ in rows:
        print(f"  {label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in s.stage_seconds.items()))
    (_, seq, seq_wall, *_), (_, conc, conc_wall, *_), (_, busy, busy_wall, *_), (_, again, again_wall, *_) = rows
    print(f"\nconcurrent vs sequential: {seq_wall / conc_wall:.2f}x pages/s overall, "
          f"{fetch_seconds(seq) / max(fetch_seconds(conc), 1e-9):.2f}x in the network stages")
    print(f"re-index of the unchanged corpus / first index: {again_wall / conc_wall:.3f} (target <= 0.1); "
          f"right after the first index, server busy: {busy_wall / conc_wall:.3f}")
    for s in (busy, again):
        assert s.documents_unchanged == args.pages and s.chunks_embedded == 0


if __name__ == "__main__":
    main()
