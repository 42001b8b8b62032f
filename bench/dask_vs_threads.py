"""The index flow on the thread pool against a 2-worker local Dask cluster, same corpus and settings.

    .venv/bin/python -m bench.dask_vs_threads [--quick] [--pages 200] [--latency 0.05]

Pages come over loopback HTTP with a fixed latency per request. Both runs index into fresh
databases; the ratio is Dask's wall time over the threads' (measured in the same run).
"""

from __future__ import annotations

import argparse
import time

from bench._run import index, isolate_prefect

from bench.corpus import generate_site, serve_site, write_sitemap
from bench.machine import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="60 pages")
    args = parser.parse_args()
    if args.quick:
        args.pages = 60
    work = isolate_prefect()
    site = generate_site(work / "site", args.pages)
    print(machine_info())
    settings = {"fetch.concurrency": 8, "fetch.per_host_concurrency": 8, "page_batch": 64, "ops.embed_task_rows": 128}
    rows = []
    with serve_site(site, args.latency) as base:
        sitemap = write_sitemap(site, base)
        index([f"{base}/articles/a00000.html"], work, "warmup")  # start-up, model load
        for label, extra in (("threads", {}), ("dask, 2 thread workers", {"ops.task_runner": "dask", "ops.dask_workers": 2})):
            started = time.perf_counter()
            summary = index([sitemap], work, label.split(",")[0], **settings, **extra)
            rows.append((label, time.perf_counter() - started, summary))
    print(f"\n{args.pages} pages, {args.latency * 1000:.0f} ms per request\n")
    print("| runner | wall s | pages/s | fetch+images s | embed s | chunks |\n|---|---|---|---|---|---|")
    for label, wall, s in rows:
        print(f"| {label} | {wall:.1f} | {s.pages_total / wall:.1f} | "
              f"{s.stage_seconds.get('fetch', 0) + s.stage_seconds.get('images', 0):.1f} | "
              f"{s.stage_seconds.get('embed', 0):.1f} | {s.chunks_total} |")
    print(f"\ndask / threads wall time: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
