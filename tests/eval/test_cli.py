"""``mmrag eval`` argument and input errors: one-line messages, exit 2, no traceback."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mmrag.cli import app

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
