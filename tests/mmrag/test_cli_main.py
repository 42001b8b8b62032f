"""`mmrag main` (what `make run` does): index, sweep, answers, report, on a small grid."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from tests.helpers import REPO_ROOT, SAMPLE_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_main_indexes_sweeps_and_writes_the_latest_report(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("k: [3, 10]\nmode: [cosine]\n")
    latest = tmp_path / "latest" / "index.html"
    config = tmp_path / "mmrag.yaml"
    config.write_text(json.dumps({"eval": {"out_dir": str(tmp_path / "runs")}, "store": {"raw_dir": str(tmp_path / "raw")},
                                  "images": {"ocr": False}}))
    result = CliRunner().invoke(app, [
        "main", "--db", str(tmp_path / "db"), "--config", str(config), "--source", str(SAMPLE_DIR),
        "--queries", str(REPO_ROOT / "data" / "eval" / "sample.jsonl"), "--grid", str(grid), "--answers", "0",
        "--latest", str(latest),
    ])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "[1/4] indexing" in out and "7 pages ok" in out
    assert "best recall@5" in out or "best text_recall@5" in out
    assert "skipped: --answers 0" in out
    html = latest.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "k=10" in html  # the sweep's settings are in the report
    run_dirs = [p for p in (tmp_path / "runs").iterdir() if (p / "sweep.parquet").exists()]
    assert len(run_dirs) == 1 and (run_dirs[0] / "index.html").read_text(encoding="utf-8") == html


def test_main_refuses_a_bad_grid_before_doing_any_work(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("colour: [red]\n")
    result = CliRunner().invoke(app, ["main", "--db", str(tmp_path / "db"), "--grid", str(grid), "--answers", "0"])
    assert result.exit_code == 2
    assert "unknown setting 'colour'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "db").exists()
