"""End to end over the sample corpus: real index (MiniLM, LanceDB), the evaluate flow (Prefect), the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrag.eval.evalset import load_evalset
from mmrag.eval.results import read_history, write_run
from mmrag.eval.run import run_evaluation
from mmrag.flows.index import run_index
from mmrag.cli import app
from mmrag.config import MmragConfig, load_config
from mmrag.pipelines.retrieve import Searcher
from mmrag.pipelines.store import IndexStore
from tests.helpers import REPO_ROOT, SAMPLE_DIR

KEY = MmragConfig().chunking.key()  # the default chunk table's key

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()
SAMPLE_SET = REPO_ROOT / "data" / "eval" / "sample.jsonl"
SAMPLE_BASELINE = REPO_ROOT / "eval" / "baselines" / "sample.json"


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory, prefect_harness) -> Path:
    """The sample corpus indexed with the default settings (minilm, paragraph) in a private database."""
    root = tmp_path_factory.mktemp("eval-sample")
    cfg = load_config(None, {"store.db_uri": str(root / "db"), "store.raw_dir": str(root / "raw"), "progress": False})
    summary = run_index([str(SAMPLE_DIR)], cfg)
    assert summary.pages_ok == 7
    return root / "db"


def test_every_label_of_the_sample_set_matches(sample_db):
    result = runner.invoke(app, ["eval", "check", str(SAMPLE_SET), "--db", str(sample_db), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["unmatched"] == [] and report["entries"] >= 40
    assert all(sum(v.values()) >= 1 for v in report["relevant"].values())


def test_check_lists_a_broken_label(sample_db, tmp_path):
    queries = tmp_path / "q.jsonl"
    good = {"id": "ok", "query": "RRF constant", "relevant": [{"url": "reranking-cross-encoders-and-rrf.html",
                                                              "section": "Choosing k"}]}
    typo = {"id": "typo", "query": "BM25 defaults", "relevant": [{"url": "reranking-cross-encoders-and-rrf.html",
                                                                 "contains": "which default to 1.5 and 0.75"}],
            "relevant_images": [{"image_url": "images/no-such-figure.png"}]}
    queries.write_text(json.dumps(good) + "\n" + json.dumps(typo) + "\n")
    result = runner.invoke(app, ["eval", "check", str(queries), "--db", str(sample_db)])
    assert result.exit_code == 1, result.output
    assert "typo: text label 0: span 'which default to 1.5 and 0.75' not found" in result.output
    assert "typo: image label 0: no image source URL ends with 'images/no-such-figure.png'" in result.output
    assert "2 of 3 labels match nothing" in result.output and "ok:" not in result.output


def test_derive_writes_checkable_sets_and_warns_about_leakage(sample_db, tmp_path):
    out = tmp_path / "derived.jsonl"
    result = runner.invoke(app, ["eval", "derive", "--db", str(sample_db), "--out", str(out), "--kind", "caption"])
    assert result.exit_code == 0, result.output
    assert "warning: leakage:" in result.output and "caption queries appear verbatim in the image text surrogates" in result.output
    entries = load_evalset(out)
    assert len(entries) >= 10 and all(e.kind == "caption" and e.to_json()["leakage"] for e in entries)
    assert runner.invoke(app, ["eval", "check", str(out), "--db", str(sample_db)]).exit_code == 0
    result = runner.invoke(app, ["eval", "derive", "--db", str(sample_db), "--out", str(out), "--kind", "heading", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["kinds"]["heading"] >= 20
    assert runner.invoke(app, ["eval", "check", str(out), "--db", str(sample_db)]).exit_code == 0


def test_eval_run_through_the_flow_matches_the_committed_baseline(sample_db, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["eval", "run", "--queries", str(SAMPLE_SET), "--db", str(sample_db),
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == out and (run_dir / "hits.parquet").is_file()
    assert summary["overall"]["text"]["n_queries"] == 48 and summary["overall"]["image"]["n_queries"] == 15
    assert set(summary["by_kind"]) == {"text", "detail", "figure"} and summary["unmatched"] == []
    assert summary["overall"]["text"]["recall@10"] > 0.6
    manifest = json.loads((run_dir / "run.json").read_text())
    tag = f"eval-{summary['run_id']}"
    assert manifest["version_tag"] == tag
    table = IndexStore(str(sample_db)).open_table(f"chunks__minilm__{KEY}")
    assert table.tags.list()[tag]["version"] == manifest["table_versions"][f"chunks__minilm__{KEY}"]
    assert summary["run_id"] in list(read_history(str(sample_db))["run_id"])
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["eval-metrics", "eval-summary"])))}
    assert keys == {"eval-metrics", "eval-summary"}

    # A rerun on a fresh index in another directory: same fingerprints as the committed baseline
    # (made in another clone), no significant drop. If sample.jsonl changed, regenerate the baseline:
    #   mmrag eval run && mmrag eval baseline --run reports/runs/<run_id> --out eval/baselines/sample.json
    result = runner.invoke(app, ["eval", "gate", "--run", str(run_dir), "--baseline", str(SAMPLE_BASELINE),
                                 "--metric", "recall@5", "--metric", "ndcg@10", "--metric", "mrr"])
    assert result.exit_code == 0, result.output
    assert "gate passed" in result.output


def test_k1_run_fails_the_recall10_gate_of_a_k10_baseline(sample_db, tmp_path, minilm):
    def evaluate(k: int) -> Path:
        cfg = load_config(None, {"store.db_uri": str(sample_db), "search.text_k": k, "eval.target": "text",
                                 "search.mode": "cosine"})
        result = run_evaluation(load_evalset(SAMPLE_SET), cfg, searcher=Searcher(cfg, embedder=minilm),
                                queries_path=SAMPLE_SET)
        return write_run(result, tmp_path / "runs")

    baseline = tmp_path / "k10.json"
    assert runner.invoke(app, ["eval", "baseline", "--run", str(evaluate(10)), "--out", str(baseline)]).exit_code == 0
    gate = ["--baseline", str(baseline), "--metric", "recall@10", "--tolerance", "0.02"]
    result = runner.invoke(app, ["eval", "gate", "--run", str(evaluate(1)), *gate])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "gate FAILED" in result.output
    rerun = evaluate(10)
    result = runner.invoke(app, ["eval", "gate", "--run", str(rerun), *gate])
    assert result.exit_code == 0, result.output

    changed = json.loads(baseline.read_text())
    changed["corpus_fingerprint"] = "0" * 64
    baseline.write_text(json.dumps(changed))
    result = runner.invoke(app, ["eval", "gate", "--run", str(rerun), *gate])
    assert result.exit_code == 2 and "refusing to compare: the corpus differs" in result.output
