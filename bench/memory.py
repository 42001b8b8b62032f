"""Peak memory (RSS) per index stage at 250 / 500 / 1,000 pages, each size in a fresh process.

    .venv/bin/python -m bench.memory [--quick] [--sizes 250 500 1000] [--page-batch 64]

A sampler thread reads VmRSS every 20 ms and charges it to the stage running then (the stages of
``IndexSummary.timed``: fetch, parse_chunk, images, embed, write, …). With batches of
``page_batch`` pages the peaks should not grow with the corpus: that is the target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench._run import ROOT, index, isolate_prefect

from bench.machine import machine_info


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(pages: int, page_batch: int) -> dict:
    """Index a generated local corpus of ``pages`` pages; returns peak RSS MiB per stage."""
    from bench.corpus import generate_site
    from mmrag.pipelines.summary import IndexSummary

    work = isolate_prefect()
    site = generate_site(work / "site", pages)
    current = {"stage": "other"}
    peaks: dict[str, float] = {}
    real_timed = IndexSummary.timed

    @contextmanager
    def tracking(self, stage):
        previous, current["stage"] = current["stage"], stage
        try:
            with real_timed(self, stage):
                yield
        finally:
            current["stage"] = previous

    IndexSummary.timed = tracking
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            stage = current["stage"]
            peaks[stage] = max(peaks.get(stage, 0.0), rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    summary = index([str(site / "articles")], work, "db", page_batch=page_batch)
    stop.set()
    sampler.join()
    return {"pages": summary.pages_ok, "seconds": round(time.perf_counter() - started, 1), "peaks": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--page-batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="sizes 100 200 400")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.page_batch)))
        return
    sizes = [100, 200, 400] if args.quick else args.sizes
    print(machine_info())
    results = {}
    for n in sizes:
        out = subprocess.run([sys.executable, "-m", "bench.memory", "--child", str(n), "--page-batch", str(args.page_batch)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        results[n] = json.loads(out.stdout.strip().splitlines()[-1])
    stages = [s for s in ("load_embedder", "sources", "fetch", "parse_chunk", "images", "embed", "write", "other")
              if any(s in r["peaks"] for r in results.values())]
    print(f"\npeak RSS MiB per stage, page batch {args.page_batch}\n")
    print("| pages | run s | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for n, r in results.items():
        print(f"| {r['pages']} | {r['seconds']} | " + " | ".join(f"{r['peaks'].get(s, 0):.0f}" for s in stages) + " |")
    first, last = results[sizes[0]], results[sizes[-1]]
    work_stages = [s for s in ("fetch", "parse_chunk", "images", "embed", "write") if s in first["peaks"]]
    growth = max(last["peaks"][s] for s in work_stages) / max(first["peaks"][s] for s in work_stages)
    print(f"\npeak over work stages, {sizes[-1]} pages / {sizes[0]} pages: {growth:.2f}x "
          f"(corpus {sizes[-1] / sizes[0]:.0f}x; bounded by batch size when close to 1)")


if __name__ == "__main__":
    main()
