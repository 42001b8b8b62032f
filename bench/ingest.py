"""Ingest throughput: pages/s with per-host concurrency against a sequential run, and re-index of the
unchanged corpus against the first index, over a loopback site with a fixed latency per request.

    .venv/bin/python bench/ingest.py [--quick] [--pages 1000] [--latency 0.05]

Every page has two paragraphs, a unique figure and the site's logo, so a first index makes about
3 requests and embeds about 3 texts per page. Ratios are against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import time

from _run import index, isolate_prefect

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
    print(f"{args.pages} pages, {args.latency * 1000:.0f} ms per request, page batch {args.page_batch}")
    rows = []
    with serve_site(site, args.latency) as base:
        sitemap = write_sitemap(site, base)
        index([f"{base}/articles/a00000.html"], work, "warmup")  # Prefect's first flow start-up, model load
        runs = [
            ("sequential first index", "seq", {"fetch.concurrency": 1, "fetch.per_host_concurrency": 1}),
            (f"concurrent first index ({args.per_host}/host)", "conc",
             {"fetch.concurrency": args.concurrency, "fetch.per_host_concurrency": args.per_host}),
            ("re-index, unchanged", "conc",
             {"fetch.concurrency": args.concurrency, "fetch.per_host_concurrency": args.per_host}),
        ]
        for label, db, overrides in runs:
            before = request_count()
            started = time.perf_counter()
            summary = index([sitemap], work, db, page_batch=args.page_batch, **overrides)
            wall = time.perf_counter() - started
            rows.append((label, summary, wall, request_count() - before))
    print("\n| run | wall s | pages/s | network stages s | embed s | requests | docs added/unchanged |")
    print("|---|---|---|---|---|---|---|")
    for label, s, wall, requests in rows:
        print(f"| {label} | {wall:.1f} | {s.pages_total / wall:.1f} | {fetch_seconds(s):.1f} | "
              f"{s.stage_seconds.get('embed', 0):.1f} | {requests} | {s.documents_added}/{s.documents_unchanged} |")
    for label, s, _, _ in rows:
        print(f"  {label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in s.stage_seconds.items()))
    (_, seq, seq_wall, _), (_, conc, conc_wall, _), (_, again, again_wall, _) = rows
    print(f"\nconcurrent vs sequential: {seq_wall / conc_wall:.2f}x pages/s overall, "
          f"{fetch_seconds(seq) / max(fetch_seconds(conc), 1e-9):.2f}x in the network stages")
    print(f"re-index of the unchanged corpus / first index: {again_wall / conc_wall:.3f} (target <= 0.1)")
    assert again.documents_unchanged == args.pages and again.chunks_embedded == 0


if __name__ == "__main__":
    main()
