"""sweep_cost: a 50-setting sweep vs a single-setting eval on the sample corpus (target: sweep < 3x one eval).

Both are measured end to end in a fresh process each (imports, model load, labels, embedding,
search, scoring -- what a user pays per command, without Prefect's server start which both share),
and also warm in one process (the marginal cost of settings). The sweep embeds the queries once and
reads the index and labels once (eval/sweep.py); each setting adds only search and scoring.

    .venv/bin/python -m bench.sweep_cost [--db DIR] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO / "data" / "eval" / "sample.jsonl"
GRID_50 = {"k": [3, 5, 10, 15, 20], "temperature": [0.1, 0.25, 0.5, 1.0, 2.0], "threshold": [0.0, 0.01]}


def ensure_index(db: Path) -> None:
    """Index data/sample/ into ``db`` once (the default minilm/paragraph tables)."""
    if db.is_dir():
        return
    from mmrag.flows.index import run_index
    from mmrag.config import load_config

    run_index([str(REPO / "data" / "sample")], load_config(None, {"store.db_uri": str(db), "progress": False}))


def single(db: str) -> float:
    """Seconds of one eval run (default setting), in this process."""
    from mmrag.eval.evalset import load_evalset
    from mmrag.eval.run import run_evaluation
    from mmrag.config import load_config

    cfg = load_config(None, {"store.db_uri": db, "progress": False})
    t0 = time.perf_counter()
    run_evaluation(load_evalset(QUERIES), cfg, queries_path=QUERIES)
    return time.perf_counter() - t0


def sweep(db: str) -> float:
    """Seconds of the 50-setting sweep, in this process (nothing written)."""
    from mmrag.eval.evalset import load_evalset
    from mmrag.eval.sweep import run_sweep
    from mmrag.config import load_config

    cfg = load_config(None, {"store.db_uri": db, "progress": False})
    t0 = time.perf_counter()
    result = run_sweep(load_evalset(QUERIES), cfg, GRID_50, queries_path=QUERIES)
    assert len(result.rows) == 50
    return time.perf_counter() - t0


def child(kind: str, db: str) -> float:
    """Run ``kind`` in a fresh interpreter, timing the whole process (imports included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.sweep_cost", "--child", kind, "--db", db], check=True, cwd=REPO,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return time.perf_counter() - t0


def main() -> None:
    """Measure and print; with --write-results replace the sweep_cost section of bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(REPO / ".mmrag" / "bench-sweep-db"))
    parser.add_argument("--child", choices=["single", "sweep"])
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps({args.child: (single if args.child == "single" else sweep)(args.db)}))
        return
    ensure_index(Path(args.db))
    load = os.getloadavg()
    cold_single = child("single", args.db)
    cold_sweep = child("sweep", args.db)
    single(args.db)  # warm-up: model, numba compilation
    warm_single = single(args.db)
    warm_sweep = sweep(args.db)
    lines = [
        "| measure | single eval s | 50-setting sweep s | ratio |",
        "|---|---:|---:|---:|",
        f"| fresh process each (end to end) | {cold_single:.1f} | {cold_sweep:.1f} | {cold_sweep / cold_single:.2f}x |",
        f"| warm, in one process | {warm_single:.2f} | {warm_sweep:.2f} | {warm_sweep / warm_single:.1f}x |",
    ]
    text = "\n".join(lines)
    print(text)
    print(f"load average at start {load[0]:.1f}; per extra setting (warm): {(warm_sweep - warm_single) / 49:.3f} s")
    if args.write_results:
        section = (f"## sweep_cost\n\nCommand: `.venv/bin/python -m bench.sweep_cost --write-results` "
                   f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); 63 queries of data/eval/sample.jsonl over "
                   f"data/sample (minilm, paragraph), grid k 5 × temperature 5 × threshold 2 = 50 settings. Load average at "
                   f"start {load[0]:.1f} on 2 cores (shared machine).\n\n{text}\n\nPer extra setting (warm): "
                   f"{(warm_sweep - warm_single) / 49:.3f} s. Target: sweep < 3× one eval end to end.\n")
        path = REPO / "bench" / "RESULTS.md"
        old = path.read_text(encoding="utf-8")
        start = old.find("## sweep_cost")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            old = old[:start] + old[end + 1:] if end >= 0 else old[:start]
        path.write_text(old.rstrip() + "\n\n" + section, encoding="utf-8")


if __name__ == "__main__":
    main()
