"""Figure retrieval: the defaults against plain cosine over the previous image surrogates, paired by query.

The image table is shared by every chunking, so bench.retrieval_quality compares settings over one
kind of surrogate. This compares across two databases built by it: the previous surrogates
(caption, alt, section; no nearby text, no OCR) searched by cosine, and today's defaults.

    .venv/bin/python -m bench.retrieval_quality --quick --no-ocr --surrogate-context none --workdir /tmp/rq_quick
    .venv/bin/python -m bench.retrieval_quality --surrogate-context nearby --workdir /tmp/rq_full --port 8768
    .venv/bin/python -m bench.image_reference --reference /tmp/rq_quick/colah-db --defaults /tmp/rq_full/colah-db
"""

from __future__ import annotations

import argparse

from bench._run import ROOT, isolate_prefect
from mmrag.config import load_config
from mmrag.eval.evalset import load_evalset
from mmrag.eval.run import run_evaluation
from mmrag.eval.significance import compare_per_query
from mmrag.pipelines.retrieve import Searcher

QUERIES = ROOT / "data" / "eval" / "colah.jsonl"


def main(argv: list[str] | None = None) -> int:
    """Evaluate the figure questions on both databases and print the paired comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="database with the previous surrogates")
    parser.add_argument("--defaults", required=True, help="database indexed with the defaults")
    args = parser.parse_args(argv)
    isolate_prefect()
    entries = [e for e in load_evalset(QUERIES) if e.relevant_images]
    reference = load_config(None, {"store.db_uri": args.reference, "search.mode": "cosine", "search.image_k": 10,
                                   "chunking.context": "none", "chunking.merge_min_tokens": 0, "eval.target": "images"})
    defaults = load_config(None, {"store.db_uri": args.defaults, "search.image_k": 10, "eval.target": "images"})
    runs = [run_evaluation(entries, cfg, searcher=Searcher(cfg), queries_path=QUERIES) for cfg in (reference, defaults)]
    for row in compare_per_query(runs[0].per_query, runs[1].per_query, ["recall@5", "ndcg@10"], targets=["image"]):
        print(f"image {row['metric']}: {row['control']:.3f} -> {row['treatment']:.3f}, paired t-test p={row['p_value']:.2g}, "
              f"{row['n_queries']} queries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
