"""Retrieval quality on a real blog: which search and chunking settings win on the colah dev set.

Serves ``../shared/corpora/colah`` on 127.0.0.1, indexes its 14 posts once per chunking setting
(the image table is shared), and evaluates ``data/eval/colah.jsonl`` under a grid of
{seed preset, cosine, hybrid} × {paragraph, merged paragraph, tokens, window} × {context on, off}
× k. Prints recall@5, nDCG@10 and MRR per target, with paired significance (ranx's tests through
:func:`mmrag.eval.significance.compare_per_query`) of every setting against two references: the
seed preset and plain cosine, both over paragraph chunks without context.

    .venv/bin/python -m bench.retrieval_quality                  # the whole grid (about 20 min on 2 cores)
    .venv/bin/python -m bench.retrieval_quality --quick          # paragraph chunks only, k 10
    .venv/bin/python -m bench.retrieval_quality --write-results  # also replace its section of bench/RESULTS.md

Tune nothing to one question: the colah set is for development; held-out sets are measured the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from statistics import mean, median
from pathlib import Path

from bench._run import CORPUS, ROOT, index, isolate_prefect, serve
from bench.machine import load_average, machine_info
from bench.results import replace_section
from mmrag.config import load_config
from mmrag.eval.evalset import load_evalset
from mmrag.eval.significance import compare_per_query
from mmrag.eval.sweep import point_config, run_sweep, setting_id
from mmrag.flows.index import run_index
from mmrag.pipelines.retrieve import Searcher

QUERIES = ROOT / "data" / "eval" / "colah.jsonl"
METRICS = ("recall@5", "ndcg@10", "mrr")
SEED = {"preset": "seed"}
CHUNKINGS = {
    "paragraph": {"chunking": "paragraph"},
    "paragraph-m48": {"chunking": "paragraph", "merge_min_tokens": 48},
    "tokens-128": {"chunking": "tokens", "chunk_size": 128},
    "window-512": {"chunking": "window", "chunk_size": 512},
}
SEARCHES = {"seed": SEED, "cosine": {"mode": "cosine"}, "hybrid": {"mode": "hybrid", "hybrid_fusion": "rrf"},
            "hybrid-linear": {"mode": "hybrid", "hybrid_fusion": "linear", "hybrid_vector_weight": 0.8}}


def index_colah(work: Path, db: str, **overrides) -> Path:
    """Serve the colah posts on loopback and index them into ``work/db`` (``index`` overrides); returns the db."""
    server, base_url = serve(CORPUS, 0)
    try:
        sources = [f"{base_url}/posts/{p.name}/" for p in sorted((CORPUS / "posts").iterdir()) if p.is_dir()]
        index(sources, work, db, **overrides)
    finally:
        server.shutdown()
    return work / db


def index_database(db: Path | None, name: str) -> Path | None:
    """Start a bench that reads an index database: an isolated Prefect home, the machine and load line, then
    ``db``, or when none is given the colah posts indexed with OCR off into ``name``; None (after saying why)
    when there is neither."""
    work = isolate_prefect()
    if db is None and not (CORPUS / "posts").is_dir():
        print(f"skipped: no --db and the colah corpus is not at {CORPUS}")
        return None
    print(f"{machine_info()}\nload average at start: {load_average()}", flush=True)
    return db or index_colah(work, name, **{"images.ocr": False})


def grid_points(quick: bool, only: list[str] | None = None, hyde: bool = False,
                weights: list[float] | None = None, contexts: tuple[str, ...] = ("none", "title_section")) -> list[dict]:
    """Every setting measured: search × chunking × context × k (the seed preset keeps its own k); with ``hyde``
    also every non-seed search with the HyDE query rewrite."""
    chunkings = {"paragraph": CHUNKINGS["paragraph"]} if quick else CHUNKINGS
    if only:
        chunkings = {name: CHUNKINGS[name] for name in only}
    ks = [10] if quick or hyde or weights else [5, 10]
    searches = dict(SEARCHES)
    for weight in weights or []:
        searches[f"hybrid-linear-{weight}"] = {"mode": "hybrid", "hybrid_fusion": "linear", "hybrid_vector_weight": weight}
    points = []
    for chunking in chunkings.values():
        for context in contexts:
            for name, search in searches.items():
                for k in ([None] if name == "seed" else ks):
                    point = {**chunking, "context": context, **search}
                    if k is not None:
                        point["k"] = k
                    points.append(point)
                    if hyde and name != "seed":
                        points.append({**point, "query_rewrite": "hyde"})
    return points


def main(argv: list[str] | None = None) -> int:
    """Index, sweep, compare; prints a table and returns 0 (2 when the corpus is absent)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="paragraph chunks only, k 10")
    parser.add_argument("--ocr", action=argparse.BooleanOptionalAction, default=True, help="OCR figures (default on)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the database here (reused when present: same --port, so the page URLs match)")
    parser.add_argument("--port", type=int, default=8766, help="loopback port the corpus is served on")
    parser.add_argument("--only", nargs="+", choices=sorted(CHUNKINGS), help="these chunkings only")
    parser.add_argument("--contexts", nargs="+", choices=["none", "title_section"], default=["none", "title_section"],
                        help="chunking.context values measured")
    parser.add_argument("--weights", nargs="+", type=float, help="also linear hybrid fusion at these vector weights")
    parser.add_argument("--hyde", action="store_true",
                        help="also every setting with the HyDE query rewrite (the embedded LLM; its latency is printed)")
    parser.add_argument("--surrogate-context", choices=["none", "nearby"], default="none",
                        help="images.surrogate_context of the index (the image table is shared: use another --workdir)")
    parser.add_argument("--write-results", action="store_true", help="replace this bench's section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    if not (CORPUS / "posts").is_dir():
        print(f"skipped: the colah corpus is not at {CORPUS}")
        return 2
    work = isolate_prefect()
    db_dir = (args.workdir or work) / "colah-db"
    server, base_url = serve(CORPUS, args.port)
    started = time.perf_counter()
    try:
        sources = [f"{base_url}/posts/{p.name}/" for p in sorted((CORPUS / "posts").iterdir()) if p.is_dir()]
        base = load_config(None, {"store.db_uri": str(db_dir), "store.raw_dir": str(db_dir.parent / "colah-raw"),
                                  "progress": False, "images.ocr": args.ocr, "eval.target": "both",
                                  "images.surrogate_context": args.surrogate_context,
                                  "fetch.respect_robots": False})
        entries = load_evalset(QUERIES)
        points = grid_points(args.quick, args.only, args.hyde, args.weights, tuple(args.contexts))
        index_seconds: dict[str, float] = {}

        def index_group(cfg, missing):
            if missing:
                t0 = time.perf_counter()
                run_index(sources, cfg)
                index_seconds[cfg.chunking.key()] = round(time.perf_counter() - t0, 1)

        sweep = run_sweep(entries, base, {}, queries_path=QUERIES, index_group=index_group, points=points,
                          log=lambda msg: print(f"  {msg}", flush=True))
    finally:
        server.shutdown()
    elapsed = time.perf_counter() - started
    ids = [setting_id(p) for p in sweep.points]
    per_query = {sid: result.per_query for sid, result in zip(ids, sweep.results)}
    seed_id = setting_id({**CHUNKINGS["paragraph"], "context": "none", **SEED})
    cosine_id = setting_id({**CHUNKINGS["paragraph"], "context": "none", "mode": "cosine", "k": 10})
    rows = []
    for sid, result in zip(ids, sweep.results):
        row = {"setting": sid, "table": point_config(base, sweep.points[ids.index(sid)]).chunking.key()}
        for target in ("text", "image"):
            overall = result.summary["overall"].get(target, {})
            for metric in METRICS:
                row[f"{target} {metric}"] = overall.get(metric)
            for ref_name, ref in (("seed", seed_id), ("cosine", cosine_id)):
                if ref not in per_query:  # the reference setting is not in this grid (--only)
                    continue
                tests = compare_per_query(per_query[ref], result.per_query, ["recall@5"], targets=[target])
                row[f"{target} r@5 p vs {ref_name}"] = tests[0]["p_value"] if tests else None
        rows.append(row)
    rewrite_ms = None
    if args.hyde:
        rewrite_ms = hyde_latency_ms(base, [e.query for e in entries][::6])  # 11 questions: the cost, not the quality
        print(f"HyDE rewrite latency (embedded LLM, per query): p50 {rewrite_ms['p50']:.0f} ms, "
              f"mean {rewrite_ms['mean']:.0f} ms over {rewrite_ms['n']} queries")
    text = report(rows, args, elapsed, index_seconds, rewrite_ms)
    print(text)
    if args.write_results:
        replace_section(text, "## retrieval_quality")
    return 0


def hyde_latency_ms(base, questions: list[str]) -> dict:
    """Wall milliseconds of one HyDE rewrite per question with the configured LLM (a fresh rewriter: no cache)."""
    rewriter = Searcher(base.model_copy(update={"search": base.search.model_copy(update={"query_rewrite": "hyde"})})).rewriter
    times = []
    for question in questions:
        t0 = time.perf_counter()
        rewriter.rewrite(question)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": median(times), "mean": mean(times), "n": len(times)}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def report(rows: list[dict], args: argparse.Namespace, elapsed: float, index_seconds: dict[str, float],
           rewrite_ms: dict | None = None) -> str:
    """The Markdown section: command, machine, then one row per setting, best text recall@5 first."""
    rows = sorted(rows, key=lambda r: -(r["text recall@5"] or 0))
    columns = ["setting", "text recall@5", "text ndcg@10", "text mrr", "text r@5 p vs seed", "text r@5 p vs cosine",
               "image recall@5", "image ndcg@10", "image mrr", "image r@5 p vs seed", "image r@5 p vs cosine"]
    lines = ["## retrieval_quality", "",
             f"Command: `.venv/bin/python -m bench.retrieval_quality{' --quick' if args.quick else ''}"
             f"{'' if args.ocr else ' --no-ocr'} --surrogate-context {args.surrogate_context}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{elapsed:.0f} s; index seconds per chunk table: {json.dumps(index_seconds)})", "",
             machine_info(), "",
             "data/eval/colah.jsonl (44 text, 22 figure questions) over the 14 colah posts served on 127.0.0.1, "
             "MiniLM. p: paired t-test (ranx via compare_per_query) of recall@5 against the seed preset and "
             "against plain cosine, both on paragraph chunks without context."
             + (f" HyDE rewrite latency per query (embedded LLM): p50 {rewrite_ms['p50']:.0f} ms." if rewrite_ms else ""), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
