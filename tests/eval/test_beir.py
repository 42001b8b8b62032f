"""BEIR import: strict reading, page names and HTML, eval entries, CLI errors, and end to end on a tiny dataset.

End to end: a 5-document, 3-query BEIR dataset written here is imported and indexed
(``mmrag eval import-beir``), checked, evaluated with ``mmrag eval run`` (real MiniLM, LanceDB,
Prefect) and exported back as BEIR from the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.eval.beir import (
    BeirDataset,
    BeirError,
    beir_entries,
    load_beir,
    page_file_names,
    page_html,
    read_qrels,
    write_beir,
)
from mmrag.eval.evalset import load_evalset

runner = CliRunner()
DOCS = [
    {"_id": "d1", "title": "Volcanoes", "text": "A volcano is an opening in the Earth's crust through which molten rock, "
     "ash and gases escape. Magma rises from the mantle and erupts as lava."},
    {"_id": "d2", "title": "Photosynthesis", "text": "Green plants use photosynthesis to turn sunlight, water and carbon "
     "dioxide into glucose and oxygen inside their chloroplasts."},
    {"_id": "d3", "title": "Sourdough", "text": "Sourdough bread is leavened by a starter of wild yeast and lactic acid "
     "bacteria, which makes the dough rise slowly and gives the loaf its tangy flavour."},
    {"_id": "d4", "title": "Chess openings", "text": "The Sicilian Defence is a chess opening in which Black answers 1.e4 "
     "with c5, fighting for the centre from the side."},
    {"_id": "d/5", "title": "Baker's yeast", "text": "Commercial baker's yeast makes bread dough rise quickly by fermenting "
     "sugars into carbon dioxide gas that the gluten traps."},
]
QUERIES = [{"_id": "q1", "text": "How do plants make food from sunlight?"},
           {"_id": "q2", "text": "What comes out of an erupting volcano?"},
           {"_id": "q3", "text": "What makes bread dough rise?"}]
QRELS = {"q1": {"d2": 1}, "q2": {"d1": 2}, "q3": {"d3": 1, "d/5": 2, "d4": 0}}


def tiny_beir(root: Path) -> Path:
    """Write the tiny BEIR dataset under ``root/tiny`` with our writer; returns the folder."""
    write_beir(root / "tiny", DOCS, QUERIES, QRELS)
    return root / "tiny"


# --------------------------------------------------------------------------- pure and reading


def test_page_names_and_html():
    names = page_file_names(["d1", "d/5", "index", "A", "a", "../x", "Q.1_b-2"])
    assert names["d1"] == "d1.html" and names["A"] == "A.html" and names["Q.1_b-2"] == "Q.1_b-2.html"
    for doc_id in ("d/5", "index", "a", "../x"):  # unsafe, a listing-page name, a case-insensitive clash
        stem = names[doc_id].removesuffix(".html")
        assert stem != doc_id and len(stem.rsplit("-", 1)[1]) == 10
    assert len(set(names.values())) == len(names) and all("/" not in n for n in names.values())
    page = page_html("d<1>", "Fish & <Chips>", "Salt <b>and</b> vinegar")
    assert "<h1>Fish &amp; &lt;Chips&gt;</h1>" in page and "<p>Salt &lt;b&gt;and&lt;/b&gt; vinegar</p>" in page
    assert "<title>d&lt;1&gt;</title>" in page_html("d<1>", "", "text")


def test_reading_a_dataset_and_building_entries(tmp_path):
    folder = tiny_beir(tmp_path)
    assert (folder / "qrels" / "test.tsv").read_text().startswith("query-id\tcorpus-id\tscore\n")
    dataset = load_beir(folder)
    assert [d["_id"] for d in dataset.corpus] == ["d1", "d2", "d3", "d4", "d/5"] and dataset.queries["q3"] == QUERIES[2]["text"]
    assert dataset.qrels == QRELS
    (tmp_path / "noheader.tsv").write_text("q1\td2\t1\r\n\nq2\td1\t2\n")
    assert read_qrels(tmp_path / "noheader.tsv") == {"q1": {"d2": 1}, "q2": {"d1": 2}}

    names = page_file_names(d["_id"] for d in DOCS)
    more = BeirDataset(path=folder, split="test", corpus=[*dataset.corpus, {"_id": "tiny", "title": "", "text": "short"}],
                       queries={**dataset.queries, "q4": "only unknown docs"},
                       qrels={**dataset.qrels, "q4": {"nope": 1}, "q9": {"d1": 1}})
    names["tiny"] = "tiny.html"
    entries, skipped, warnings = beir_entries(more, names)
    assert [e.id for e in entries] == ["q1", "q2", "q3"] and all(e.kind == "beir" for e in entries)
    q3 = entries[2].to_json()["relevant"]
    assert q3 == [{"url": "d3.html", "section": None, "contains": None, "beir_id": "d3", "grade": 1},
                  {"url": names["d/5"], "section": None, "contains": None, "beir_id": "d/5", "grade": 2}]
    assert skipped == {"queries_without_relevant": 1, "qrels_unknown_query": 1, "qrels_unknown_document": 1,
                       "qrels_not_relevant": 1, "short_documents": 1}
    assert len(warnings) == 3 and "fewer than 30 characters" in warnings[2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("corpus.jsonl", '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n', "corpus.jsonl:2: invalid JSON"),
        ("corpus.jsonl", '{"_id": "d1", "text": "ok"}\n{"_id": "d1", "text": "again"}\n', "corpus.jsonl:2: _id: duplicate id 'd1'"),
        ("corpus.jsonl", '{"_id": "d1", "title": "no text"}\n', "corpus.jsonl:1: text: missing"),
        ("corpus.jsonl", '["d1", "text"]\n', "corpus.jsonl:1: expected a JSON object, got list"),
        ("queries.jsonl", '{"text": "no id"}\n', "queries.jsonl:1: _id: missing or empty"),
        ("queries.jsonl", '{"_id": "q1", "text": "  "}\n', "queries.jsonl:1: text: empty query"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1 d1 1\n", "test.tsv:2: expected 3 tab-separated fields"),
        ("qrels/test.tsv", "q1\td1\thigh\n", "test.tsv:1: score: expected an integer, got 'high'"),
    ],
)
def test_malformed_files_fail_with_one_line(tmp_path, name, content, message):
    folder = tiny_beir(tmp_path)
    (folder / name).write_text(content)
    with pytest.raises(BeirError, match=message):
        load_beir(folder)
    result = runner.invoke(app, ["eval", "import-beir", str(folder), "--out", str(tmp_path / "set.jsonl"), "--no-index"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmrag: error: ") and message in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "set.jsonl").exists()


def test_missing_files_and_no_usable_query(tmp_path):
    for args, message in (
        ([str(tmp_path / "nowhere")], "not a BEIR dataset folder"),
        ([str(tiny_beir(tmp_path)), "--split", "dev"], "qrels/dev.tsv: not found"),
    ):
        result = runner.invoke(app, ["eval", "import-beir", *args, "--out", str(tmp_path / "s.jsonl"), "--no-index"])
        assert result.exit_code == 2 and message in result.output, result.output
    (tmp_path / "tiny" / "queries.jsonl").unlink()
    result = runner.invoke(app, ["eval", "import-beir", str(tmp_path / "tiny"), "--out", str(tmp_path / "s.jsonl"), "--no-index"])
    assert result.exit_code == 2 and "queries.jsonl: not found" in result.output
    write_beir(tmp_path / "zero", DOCS, QUERIES, {"q1": {"d2": 0}})
    result = runner.invoke(app, ["eval", "import-beir", str(tmp_path / "zero"), "--out", str(tmp_path / "s.jsonl"), "--no-index"])
    assert result.exit_code == 2 and "no query has a relevant document" in result.output


def test_import_without_indexing_writes_pages_and_eval_set(tmp_path):
    result = runner.invoke(app, ["eval", "import-beir", str(tiny_beir(tmp_path)), "--out", str(tmp_path / "set.jsonl"),
                                 "--no-index", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    pages = tmp_path / "set-pages"
    assert summary["pages_dir"] == str(pages) and summary["documents"] == 5 and summary["queries"] == 3
    assert summary["labels"] == 4 and summary["skipped"]["qrels_not_relevant"] == 1 and summary["index"] is None
    assert sorted(p.name for p in pages.iterdir()) == sorted(page_file_names(d["_id"] for d in DOCS).values())
    assert [e.id for e in load_evalset(tmp_path / "set.jsonl")] == ["q1", "q2", "q3"]


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_import_index_and_evaluate_a_tiny_beir_dataset(tmp_path, prefect_harness):
    env = {"MMRAG_STORE__RAW_DIR": str(tmp_path / "raw")}
    db, evalset = tmp_path / "db", tmp_path / "tiny.jsonl"
    result = runner.invoke(app, ["eval", "import-beir", str(tiny_beir(tmp_path)), "--db", str(db), "--out", str(evalset),
                                 "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["index"]["pages_ok"] == 5 and summary["queries"] == 3

    assert runner.invoke(app, ["eval", "check", str(evalset), "--db", str(db)]).exit_code == 0
    result = runner.invoke(app, ["eval", "run", "--queries", str(evalset), "--db", str(db), "--target", "text",
                                 "--out", str(tmp_path / "runs"), "--json"], env=env)
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    overall = run["overall"]["text"]
    assert run["unmatched"] == [] and overall["n_queries"] == 3 and set(run["by_kind"]) == {"beir"}
    # q1 and q2 find their one document first; q3 has two relevant documents (grades 1 and 2), both in the top 2.
    assert overall["recall@1"] == pytest.approx((1 + 1 + 0.5) / 3)
    for metric in ("recall@5", "ndcg@10", "mrr", "hit_rate@1"):
        assert overall[metric] == pytest.approx(1.0), metric

    out = tmp_path / "back"
    result = runner.invoke(app, ["eval", "export", "--format", "beir", "--run", run["run_dir"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    back = load_beir(out)
    assert sorted(d["text"] for d in back.corpus) == sorted(d["text"] for d in DOCS)  # one chunk per document
    assert sorted(d["title"] for d in back.corpus) == sorted(d["title"] for d in DOCS)
    assert back.queries == {q["_id"]: q["text"] for q in QUERIES}
    text_of = {d["_id"]: d["text"] for d in back.corpus}
    assert {q: sorted(text_of[c] for c in docs) for q, docs in back.qrels.items()} == {
        q: sorted(next(d["text"] for d in DOCS if d["_id"] == doc) for doc, s in docs.items() if s > 0) for q, docs in QRELS.items()}
