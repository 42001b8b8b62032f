"""``mmrag eval`` argument and input errors: one-line messages, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from mmrag.cli import app
from tests.helpers import REPO_ROOT

runner = CliRunner()


def test_bad_eval_set_lists_each_bad_line(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": "x", "relevant": [{"url": "a.html"}]}) + "\n"
                       + json.dumps({"id": "b", "query": "y", "relevant": [{"section": "S"}]}) + "\n{oops\n")
    for command in (["eval", "run", "--queries", str(queries), "--db", str(tmp_path)],
                    ["eval", "check", str(queries), "--db", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines == [f"mmrag: error: {queries}:2: relevant.0.url: Field required",
                         f"mmrag: error: {queries}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)"]


def test_missing_database_bad_kind_and_bad_cutoffs(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": "x", "relevant": [{"url": "a.html"}]}) + "\n")
    result = runner.invoke(app, ["eval", "check", str(queries), "--db", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no database at" in result.output
    result = runner.invoke(app, ["eval", "derive", "--out", str(tmp_path / "d.jsonl"), "--kind", "captions"])
    assert result.exit_code == 2 and "unknown kind 'captions'" in result.output
    result = runner.invoke(app, ["eval", "run", "--queries", str(queries), "--db", str(tmp_path)],
                           env={"MMRAG_EVAL__CUTOFFS": "[0, 5]"})
    assert result.exit_code == 2 and "eval.cutoffs" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["eval", "gate", "--run", str(tmp_path), "--baseline", str(tmp_path / "b.json"),
                                 "--metric", "recall@5"])
    assert result.exit_code == 2 and "not an eval run directory" in result.output


def test_eval_run_on_a_text_only_index_is_quiet_and_fails_in_one_line(tmp_path):
    """A real process, as a user runs it: on an index of pages without figures, a set with text labels only is
    evaluated on text (no --target needed) without Prefect's per-task lines on stderr (they come with --verbose);
    asking for images gets one ``mmrag: error:`` line, not Prefect's tracebacks."""
    pages = tmp_path / "pages"
    pages.mkdir()
    for name, title, text in (("fusion", "Rank fusion", "Reciprocal rank fusion adds one over sixty plus the rank."),
                              ("hnsw", "Graph indexes", "HNSW builds a layered proximity graph and walks it greedily.")):
        (pages / f"{name}.html").write_text(f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1>"
                                            f"<p>{text}</p></article></body></html>", encoding="utf-8")
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": "reciprocal rank fusion",
                                   "relevant": [{"url": (pages / "fusion.html").resolve().as_uri()}]}) + "\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "MMRAG_STORE__RAW_DIR": str(tmp_path / "raw")}
    env.pop("MMRAG_DEBUG", None)

    def mmrag(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from mmrag.cli import app; app()", *args], capture_output=True,
                              text=True, cwd=REPO_ROOT, env=env, timeout=300)

    db = str(tmp_path / "db")
    indexed = mmrag("index", str(pages), "--db", db, "--json")
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    assert json.loads(indexed.stdout)["images_total"] == 0
    run = ["eval", "run", "--queries", str(queries), "--db", db, "--out", str(tmp_path / "runs"), "--json"]
    quiet = mmrag(*run)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert list(json.loads(quiet.stdout)["overall"]) == ["text"]
    assert "Task run" not in quiet.stderr and "Finished in state" not in quiet.stderr, quiet.stderr[-2000:]
    verbose = mmrag("--verbose", *run)
    assert verbose.returncode == 0 and "Finished in state Completed" in verbose.stderr, verbose.stderr[-2000:]
    images = mmrag(*run, "--target", "images")
    assert images.returncode == 2
    lines = images.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmrag: error: no table 'images__minilm' in {db}; tables: "), lines
