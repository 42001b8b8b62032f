"""Real eval runs over the sample corpus for the export and diff tests, built once per test session.

The sample corpus (``data/sample/``, 7 pages) is indexed with the defaults (MiniLM, paragraph
chunking, OCR off as in tests/conftest.py) and ``data/eval/sample.jsonl`` is evaluated twice in
cosine mode over text and images: k=10 and k=1. The result lives under pytest's session base
temp folder, so the second test module that asks for it reuses the first one's (no global state).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from mmrag.config import load_config
from mmrag.eval.evalset import load_evalset
from mmrag.eval.results import write_run
from mmrag.eval.run import run_evaluation
from mmrag.flows.index import run_index
from mmrag.pipelines.retrieve import Searcher
from tests.helpers import REPO_ROOT, SAMPLE_DIR

SAMPLE_SET = REPO_ROOT / "data" / "eval" / "sample.jsonl"


@dataclass(frozen=True)
class SampleRuns:
    """The sample index and two run directories of the sample eval set over it (k=10 and k=1)."""

    db: Path
    k10: Path
    k1: Path


def build_sample_runs(root: Path, *, embedder=None) -> SampleRuns:
    """Index the sample corpus into ``root/db`` and write the k=10 and k=1 runs under ``root/runs`` (needs Prefect)."""
    cfg = load_config(None, {"store.db_uri": str(root / "db"), "store.raw_dir": str(root / "raw"), "progress": False})
    summary = run_index([str(SAMPLE_DIR)], cfg)
    assert summary.pages_ok == 7
    runs = {}
    for k in (10, 1):
        cfg = load_config(None, {"store.db_uri": str(root / "db"), "search.text_k": k, "search.image_k": k,
                                 "eval.target": "both", "search.mode": "cosine"})
        result = run_evaluation(load_evalset(SAMPLE_SET), cfg, searcher=Searcher(cfg, embedder=embedder),
                                queries_path=SAMPLE_SET, run_id=f"sample-k{k}")
        runs[k] = write_run(result, root / "runs", db_uri=str(root / "db"), tag_versions=False)
    return SampleRuns(db=root / "db", k10=runs[10], k1=runs[1])


def sample_runs(tmp_path_factory, *, embedder=None) -> SampleRuns:
    """The session's :class:`SampleRuns`, built on first use under the session's base temp folder."""
    root = tmp_path_factory.getbasetemp() / "sample-runs"
    marker = root / "runs.json"
    if marker.is_file():
        paths = json.loads(marker.read_text())
        return SampleRuns(**{k: Path(v) for k, v in paths.items()})
    shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
    root.mkdir(parents=True)
    runs = build_sample_runs(root, embedder=embedder)
    marker.write_text(json.dumps({"db": str(runs.db), "k10": str(runs.k10), "k1": str(runs.k1)}))
    return runs
