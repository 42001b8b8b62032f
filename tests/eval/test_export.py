"""TREC and BEIR export: pure line builders, the CLI, and an independent recomputation of a real run's metrics.

The independent check: a real run over the sample corpus is exported as TREC files, and
ir-measures (trec_eval's C code through pytrec-eval-terrier, not ranx) recomputes every metric the
run stored, per query and on average, to 1e-6.
"""

from __future__ import annotations

import json

import ir_measures
import pyarrow.parquet as pq
import pytest
from ir_measures import RR, P, R, Success, nDCG
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.config import MmragConfig
from mmrag.eval.beir import load_beir
from mmrag.eval.export import ExportError, beir_corpus, trec_qrels_lines, trec_run_lines
from mmrag.eval.results import write_run
from mmrag.pipelines.store import IndexStore
from tests.eval.fakes import fake_result
from tests.eval.sample_runs import SAMPLE_SET, sample_runs

KEY = MmragConfig().chunking.key()  # the default chunk table's key

runner = CliRunner()
MEASURES = {"recall": R, "precision": P, "ndcg": nDCG, "hit_rate": Success}


def ir_measure(name: str):
    """The ir-measures measure of one of our ranx metric names (``recall@5`` -> ``R@5``, ``mrr`` -> ``RR``)."""
    if name == "mrr":
        return RR
    family, k = name.split("@")
    return MEASURES[family] @ int(k)


# --------------------------------------------------------------------------- pure


def test_trec_run_lines_order_dedupe_and_scores():
    hits = [
        {"target": "text", "query_id": "q2", "rank": 1, "id": "c9", "score": 0.9},
        {"target": "text", "query_id": "q1", "rank": 2, "id": "c2", "score": 0.5},
        {"target": "text", "query_id": "q1", "rank": 1, "id": "c1", "score": 0.5},
        {"target": "text", "query_id": "q1", "rank": 3, "id": "c1", "score": 0.4},
        {"target": "image", "query_id": "q1", "rank": 1, "id": "i1", "score": 0.3},
    ]
    assert trec_run_lines(hits, target="text", tag="r1") == [
        "q1 Q0 c1 1 1.0 r1", "q1 Q0 c2 2 0.5 r1", "q2 Q0 c9 1 1.0 r1"]
    assert trec_run_lines(hits, target="text", tag="r1", score="search")[1] == "q1 Q0 c2 2 0.5 r1"
    assert trec_run_lines(hits, target="image", tag="r1") == ["q1 Q0 i1 1 1.0 r1"]
    assert trec_qrels_lines({"q2": ["b", "a", "a"], "q1": ["z"]}) == ["q1 0 z 1", "q2 0 a 1", "q2 0 b 1"]
    with pytest.raises(ExportError, match="whitespace"):
        trec_qrels_lines({"q 1": ["a"]})
    with pytest.raises(ExportError, match="unknown TREC score"):
        trec_run_lines(hits, target="text", tag="r1", score="softmax")


def test_beir_corpus_records():
    chunks = [{"id": "c2", "doc_url": "file:///a.html", "article_title": "A", "section": "A > S", "char_start": 50, "text": "two"},
              {"id": "c1", "doc_url": "file:///a.html", "article_title": None, "section": None, "char_start": 0, "text": "one"}]
    assert beir_corpus(chunks) == [
        {"_id": "c1", "title": "", "text": "one", "metadata": {"url": "file:///a.html", "section": ""}},
        {"_id": "c2", "title": "A", "text": "two", "metadata": {"url": "file:///a.html", "section": "A > S"}},
    ]


def test_export_errors_are_one_line_exit_2(tmp_path):
    run_dir = write_run(fake_result([1.0, 0.0]), tmp_path / "runs")
    cases = [
        (["--format", "trec", "--run", str(tmp_path / "nowhere")], "is not an eval run directory"),
        (["--format", "csv", "--run", str(run_dir)], "unsupported format 'csv'"),
        (["--format", "trec", "--queries", str(SAMPLE_SET)], "give --run RUN_DIR"),
        (["--format", "trec", "--run", str(run_dir), "--score", "softmax"], "unknown TREC score"),
        (["--format", "beir"], "give either --run RUN_DIR or --queries FILE"),
        (["--format", "beir", "--queries", str(SAMPLE_SET), "--db", str(tmp_path / "nodb")], "no database at"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", "export", "--out", str(tmp_path / "out"), *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mmrag: error: ") and message in lines[0], (args, result.output)


def test_trec_export_of_a_synthetic_run(tmp_path):
    run_dir = write_run(fake_result([1.0, 0.0, 0.5]), tmp_path / "runs")
    result = runner.invoke(app, ["eval", "export", "--format", "trec", "--run", str(run_dir), "--out", str(tmp_path / "t"), "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert set(files) == {"text"}
    assert (tmp_path / "t" / "text.run").read_text().splitlines()[0] == "q-000 Q0 c0 1 1.0 r1"
    assert (tmp_path / "t" / "text.qrels").read_text().splitlines()[:2] == ["q-000 0 c0 1", "q-000 0 d0 1"]


# --------------------------------------------------------------------------- real runs over the sample corpus


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness, minilm):
    """The sample index with its k=10 and k=1 runs (shared with test_diff through the session temp folder)."""
    return sample_runs(tmp_path_factory, embedder=minilm)


@pytest.mark.slow
def test_ir_measures_recomputes_the_stored_metrics_from_the_trec_export(runs, tmp_path):
    out = tmp_path / "trec"
    result = runner.invoke(app, ["eval", "export", "--format", "trec", "--run", str(runs.k10), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((runs.k10 / "run.json").read_text())
    names = manifest["metrics"]
    assert {"recall@5", "ndcg@10", "mrr", "precision@5", "hit_rate@5", "recall@1"} <= set(names)
    per_query = pq.read_table(runs.k10 / "per_query.parquet").to_pylist()
    aggregates = {r["target"]: r for r in pq.read_table(runs.k10 / "aggregates.parquet").to_pylist() if r["kind"] == "all"}
    measures = {name: ir_measure(name) for name in names}
    for target in ("text", "image"):
        qrels = list(ir_measures.read_trec_qrels(str(out / f"{target}.qrels")))
        run = list(ir_measures.read_trec_run(str(out / f"{target}.run")))
        assert run and qrels
        theirs = {(m.query_id, str(m.measure)): m.value for m in ir_measures.iter_calc(list(measures.values()), qrels, run)}
        ours = [r for r in per_query if r["target"] == target]
        assert len(ours) == len({q.query_id for q in qrels}) == aggregates[target]["n_queries"] > 10
        for name, measure in measures.items():
            # a query with no run lines counts as 0, as ranx counts it (trec_eval -c)
            values = [theirs.get((r["query_id"], str(measure)), 0.0) for r in ours]
            for row, value in zip(ours, values):
                assert value == pytest.approx(row[name], abs=1e-6), (target, row["query_id"], name)
            assert sum(values) / len(values) == pytest.approx(aggregates[target][name], abs=1e-6), (target, name)


@pytest.mark.slow
def test_beir_export_from_the_eval_set_and_from_the_run_agree(runs, tmp_path):
    by_queries, by_run = tmp_path / "beir-q", tmp_path / "beir-r"
    result = runner.invoke(app, ["eval", "export", "--format", "beir", "--queries", str(SAMPLE_SET), "--db", str(runs.db),
                                 "--out", str(by_queries), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["table"] == f"chunks__minilm__{KEY}" and summary["unmatched_labels"] == 0
    result = runner.invoke(app, ["eval", "export", "--format", "beir", "--run", str(runs.k10), "--out", str(by_run)])
    assert result.exit_code == 0, result.output
    assert "48 queries" in result.output

    assert (by_queries / "qrels" / "test.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    dataset = load_beir(by_queries)  # our own strict reader accepts what we wrote
    n_chunks = IndexStore(str(runs.db)).open_table(f"chunks__minilm__{KEY}").count_rows()
    assert len(dataset.corpus) == summary["documents"] == n_chunks
    assert all(d["text"] and d["title"] for d in dataset.corpus)
    assert len(dataset.queries) == summary["queries"] == 48  # the text-labelled queries of sample.jsonl
    run_qrels = json.loads((runs.k10 / "qrels.json").read_text())["text"]
    assert {q: sorted(d) for q, d in dataset.qrels.items()} == {q: sorted(ids) for q, ids in run_qrels.items()}
    assert all(score == 1 for docs in dataset.qrels.values() for score in docs.values())
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (by_queries / name).read_text() == (by_run / name).read_text(), name
