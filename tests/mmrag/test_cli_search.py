"""``mmrag search`` (one-shot, filters, errors, the ``--stdin`` warm loop) and ``mmrag import-vectors``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.config import MmragConfig
from mmrag.pipelines.import_vectors import import_vectors
from mmrag.pipelines.store import IndexStore
from tests.fake_llm_server import unused_port
from tests.helpers import REPO_ROOT

runner = CliRunner()

TEXTS = [
    ("Reranking", "Fusion", "Reciprocal rank fusion adds one over sixty plus the rank from every ranking."),
    ("Reranking", "Cross-encoders", "A cross-encoder reads the query and the passage together and scores relevance."),
    ("Indexes", "HNSW", "HNSW builds a layered proximity graph and walks it greedily towards the query."),
    ("Indexes", "IVF-PQ", "IVF-PQ clusters vectors into partitions and compresses them with product quantisation."),
    ("Chunking", "Windows", "Fixed windows of characters overlap so that no sentence is cut without context."),
    ("O'Reilly's notes", "Misc", "Softmax temperature sharpens or flattens the distribution of similarity scores."),
]
KEY = MmragConfig().chunking.key()  # the default chunk table's key
CAPTIONS = ["a layered graph of points", "a bar chart of recall against latency", "two towers encoding images and text"]
PUBLISHED = {"Reranking": "2024-04-29", "Indexes": "2024-03-18"}  # the other articles have no known date


@pytest.fixture(scope="module")
def minilm_db(tmp_path_factory, minilm) -> Path:
    """A database with real MiniLM vectors in the default tables (chunks__minilm__<default key>, images__minilm)."""
    root = tmp_path_factory.mktemp("cli-search")
    store = IndexStore(str(root / "db"))
    records = [{"article_title": a, "section": s, "text": t, "url": f"https://notes.example/{a.split()[0].lower()}",
                "published": PUBLISHED.get(a)} for a, s, t in TEXTS]
    np.save(root / "t.npy", minilm.embed_texts([r["text"] for r in records]))
    (root / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    import_vectors(store, root / "t.npy", root / "t.jsonl", embedder="minilm", target="text",
                   chunking_key=MmragConfig().chunking.key())
    images = [{"image_path": f"img/{i}.png", "caption": c, "article_title": "Indexes", "section": "Figures",
               "url": "https://notes.example/indexes", "published": PUBLISHED["Indexes"]} for i, c in enumerate(CAPTIONS)]
    np.save(root / "i.npy", minilm.embed_texts(CAPTIONS))
    (root / "i.json").write_text(json.dumps(images), encoding="utf-8")
    import_vectors(store, root / "i.npy", root / "i.json", embedder="minilm", target="images")
    return root / "db"


@pytest.fixture
def loads(monkeypatch, minilm) -> list[str]:
    """Serve the session's MiniLM instead of loading it again, counting how often an embedder is built."""
    from mmrag.pipelines.retrieve import searcher as searcher_module

    calls: list[str] = []

    def factory(cfg):
        calls.append(cfg.name)
        return minilm

    monkeypatch.setattr(searcher_module, "create_embedder", factory)
    return calls


def test_search_json_lists_hits(minilm_db, loads):
    result = runner.invoke(app, ["search", "how does reciprocal rank fusion work", "--db", str(minilm_db), "--json",
                                 "--mode", "cosine", "--k", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tables"] == {"text": f"chunks__minilm__{KEY}"} and data["mode"] == "cosine"
    top = data["hits"][0]
    assert top["rank"] == 1 and top["target"] == "text" and top["section"] == "Fusion"
    assert {"id", "score", "similarity", "doc_url", "article_title", "text"} <= set(top)
    assert len(data["hits"]) == 2 and loads == ["minilm"]


def test_search_human_table_both_targets_and_filters(minilm_db, loads):
    result = runner.invoke(app, ["search", "graph index", "--db", str(minilm_db), "--target", "both", "--mode", "cosine",
                                 "--k", "2", "--title", "Indexes"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("text hits for 'graph index': 2 (cosine") and f"chunks__minilm__{KEY}" in lines[0]
    assert any(line.startswith("images hits") for line in lines)
    assert "HNSW builds" in result.stdout and "Reciprocal" not in result.stdout
    assert "[not_fetched] img/" in result.stdout
    quoted = runner.invoke(app, ["search", "temperature", "--db", str(minilm_db), "--json", "--mode", "cosine",
                                 "--title", "O'Reilly's notes"])
    assert [h["article_title"] for h in json.loads(quoted.stdout)["hits"]] == ["O'Reilly's notes"]
    where = runner.invoke(app, ["search", "vectors", "--db", str(minilm_db), "--json", "--mode", "cosine",
                                "--where", "section IN ('HNSW', 'Windows')", "--url-prefix", "https://notes.example/ind"])
    assert [h["section"] for h in json.loads(where.stdout)["hits"]] == ["HNSW"]
    softmax = runner.invoke(app, ["search", "vectors", "--db", str(minilm_db), "--json", "--mode", "softmax"])
    data = json.loads(softmax.stdout)
    assert data["softmax_exact"] == {"text": True} and len(data["hits"]) == 6  # 6 rows: every score ≥ 0.01
    default = json.loads(runner.invoke(app, ["search", "vectors", "--db", str(minilm_db), "--json"]).stdout)
    assert default["mode"] == "hybrid" and default["softmax_exact"] == {} and len(default["hits"]) == 6  # up to k: all rows


def test_search_filters_by_publication_date(minilm_db, loads):
    def hits(*args: str, **line) -> list[dict]:
        base = ["search", "--db", str(minilm_db), "--json", "--mode", "cosine", "--k", "10", "--target", "both"]
        if line:
            result = runner.invoke(app, [*base, "--stdin"], input=json.dumps({"query": "vectors", **line}) + "\n")
        else:
            result = runner.invoke(app, [*base, "vectors", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["hits"]

    everything = hits()
    assert {h["article_title"] for h in everything} == {a for a, _, _ in TEXTS}
    # every hit carries its article's date (ISO), or null when the article has none
    assert {(h["article_title"], h["published"]) for h in everything} == {(a, PUBLISHED.get(a)) for a, _, _ in TEXTS}
    since = hits("--published-since", "2024-04-01")
    assert {(h["target"], h["section"]) for h in since} == {("text", "Fusion"), ("text", "Cross-encoders")}
    until = hits("--published-until", "2024-03-31", "--published-since", "2024-03-18")
    assert {h["section"] for h in until if h["target"] == "text"} == {"HNSW", "IVF-PQ"}
    assert sorted(h["text"] for h in until if h["target"] == "image") == sorted(CAPTIONS)
    # rows without a date (Chunking, O'Reilly's notes) pass no date bound
    assert {h["article_title"] for h in hits("--published-since", "1900-01-01")} == set(PUBLISHED)
    assert {h["section"] for h in hits(published_until="2024-03-31") if h["target"] == "text"} == {"HNSW", "IVF-PQ"}
    bad = runner.invoke(app, ["search", "q", "--db", str(minilm_db), "--published-since", "2024/04/01"])
    assert bad.exit_code == 2 and "invalid publication date '2024/04/01'" in bad.output


def test_search_errors_are_one_line_exit_2(minilm_db, loads, tmp_path):
    image = tmp_path / "q.png"
    image.write_bytes(b"not really")
    cases = [
        (["search", "--image", str(image), "--db", str(minilm_db)], "cannot embed image queries; use one that can"),
        (["search", "q", "--db", str(minilm_db), "--where", "nonsense_column = 3"], "nonsense_column"),
        (["search", "q", "--db", str(tmp_path / "none")], "no database"),
        (["search", "--db", str(minilm_db)], "give a QUERY or --image"),
        (["search", "q", "--db", str(minilm_db), "--image-status", "ok"], "--image-status"),
        (["search", "q", "--db", str(minilm_db), "--reranker", "llm", "--llm", "gpt:4"], "unknown backend 'gpt'"),
        (["search", "q", "--db", str(minilm_db), "--reranker", "llm", "--llm-url", f"http://127.0.0.1:{unused_port()}/v1"],
         "cannot reach the OpenAI-compatible endpoint"),
        (["search", "q", "--db", str(minilm_db), "--mode", "dot"], "search.mode"),
        (["search", "q", "--db", str(minilm_db), "--chunking", "window"], "no table 'chunks__minilm__window-256-25-ctx'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
        assert result.output.strip().count("\n") == 0, result.output


def test_stdin_answers_each_line_with_one_loaded_model(minilm_db, loads):
    lines = "\n".join([
        "how does reciprocal rank fusion work",
        json.dumps({"query": "a chart of latency", "target": "images", "k": 1, "mode": "cosine"}),
        json.dumps({"query": "x", "bogus": True}),
        "",
        json.dumps({"query": "graph", "title": "Indexes", "mode": "cosine", "k": 1}),
    ]) + "\n"
    result = runner.invoke(app, ["search", "--stdin", "--json", "--db", str(minilm_db)], input=lines)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 4
    assert answers[0]["hits"][0]["section"] == "Fusion"
    assert answers[1]["hits"][0]["text"] == "a bar chart of recall against latency"
    assert answers[2] == {"line": 3, "error": answers[2]["error"]} and "bogus" in answers[2]["error"]
    assert answers[3]["hits"][0]["section"] == "HNSW"
    assert "load_model" in answers[0]["timings_ms"] and "load_model" not in answers[3]["timings_ms"]
    assert loads == ["minilm"]


def test_import_vectors_command(tmp_path):
    np.save(tmp_path / "v.npy", np.eye(3, 8, dtype=np.float32))
    (tmp_path / "c.json").write_text(json.dumps([{"text": f"t{i}", "article_title": "A"} for i in range(3)]))
    db = tmp_path / "db"
    result = runner.invoke(app, ["import-vectors", str(tmp_path / "v.npy"), str(tmp_path / "c.json"), "--embedder-label",
                                 "vendor-vecs", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["table"] == "chunks__vendor-vecs__paragraph" and summary["rows"] == 3 and summary["dimension"] == 8
    human = runner.invoke(app, ["import-vectors", str(tmp_path / "v.npy"), str(tmp_path / "c.json"), "--embedder-label",
                                "vendor-vecs", "--db", str(db)])
    assert human.exit_code == 0 and "imported 3 text rows (8-d" in human.stdout
    (tmp_path / "short.json").write_text(json.dumps([{"text": "one"}]))
    bad = runner.invoke(app, ["import-vectors", str(tmp_path / "v.npy"), str(tmp_path / "short.json"), "--embedder-label",
                              "x", "--db", str(db)])
    assert bad.exit_code == 2 and "1 records but" in bad.output


@pytest.mark.slow
def test_stdin_is_a_long_lived_process(minilm_db):
    """A real process answers a query, waits, then answers the next one without reloading the model."""
    env = dict(os.environ, CI="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mmrag.cli import app; app()", "search", "--stdin", "--json", "--mode", "cosine",
         "--k", "1", "--db", str(minilm_db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT, env=env,
    )
    try:
        proc.stdin.write("reciprocal rank fusion\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        proc.stdin.write("layered proximity graph\n")
        proc.stdin.flush()
        second = json.loads(proc.stdout.readline())
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first["hits"][0]["section"] == "Fusion" and "load_model" in first["timings_ms"]
    assert second["hits"][0]["section"] == "HNSW" and "load_model" not in second["timings_ms"]
    assert second["timings_ms"]["total"] < first["timings_ms"]["total"]


def test_a_hybrid_search_prints_no_library_warnings(minilm_db):
    """lance logs a deprecation warning on every hybrid query that selects columns (lancedb's own hybrid search
    does): the CLI keeps them off the terminal unless --verbose."""
    env = {k: v for k, v in os.environ.items() if k not in ("LANCEDB_LOG", "LANCE_LOG", "RUST_LOG")}
    command = [sys.executable, "-c", "from mmrag.cli import app; app()", "search", "reciprocal rank fusion", "--json",
               "--db", str(minilm_db)]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert json.loads(quiet.stdout)["mode"] == "hybrid"
    assert "WARN" not in quiet.stderr, quiet.stderr[-2000:]
    verbose = subprocess.run([*command[:3], "--verbose", *command[3:]], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert verbose.returncode == 0 and "did not include `_distance`" in verbose.stderr


def test_image_scoring_option_reaches_search_and_eval_run(minilm_db, loads, tmp_path):
    result = runner.invoke(app, ["search", "a layered graph", "--db", str(minilm_db), "--target", "images",
                                 "--image-scoring", "max_query"])
    assert result.exit_code == 2 and "max_query" in result.output and "vector_multi" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["search", "a layered graph", "--db", str(minilm_db), "--target", "images", "--json",
                                 "--image-scoring", "mean", "--mode", "cosine", "--k", "1"])
    assert result.exit_code == 0 and json.loads(result.stdout)["hits"][0]["text"] == CAPTIONS[0]
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": "x", "relevant": [{"url": "a.html"}]}) + "\n")
    for command in (["search", "x", "--db", str(minilm_db)], ["eval", "run", "--queries", str(queries), "--db", str(minilm_db)]):
        result = runner.invoke(app, [*command, "--image-scoring", "best"])
        assert result.exit_code == 2 and "search.image_scoring" in result.output, result.output
