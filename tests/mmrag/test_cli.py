"""The ``mmrag`` command line, in process (typer's runner) and once as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.config import MmragConfig
from tests.helpers import REPO_ROOT, SAMPLE_DIR

runner = CliRunner()


def one_article(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "a.html").write_text(
        "<html><head><title>Tiny</title></head><body><article><h1>Tiny</h1><h2>Part</h2>"
        "<p>Contrastive training pulls matching image and text pairs together.</p></article></body></html>"
    )
    return folder


def test_invalid_config_file_is_one_line_naming_the_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("embed:\n  batch_size: zero\n")
    result = runner.invoke(app, ["index", str(tmp_path), "--config", str(bad)])
    assert result.exit_code == 2
    assert "embed.batch_size" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0


def test_invalid_cli_value_names_the_option(tmp_path):
    result = runner.invoke(app, ["index", str(tmp_path), "--chunking", "sentences"])
    assert result.exit_code == 2 and "chunking.strategy" in result.output
    result = runner.invoke(app, ["index", str(tmp_path), "--batch-size", "many"])
    assert result.exit_code == 2 and "--batch-size" in result.output


def test_status_and_export_on_a_missing_database(tmp_path):
    result = runner.invoke(app, ["status", "--db", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no database" in result.output
    result = runner.invoke(app, ["export", "--db", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "csv"])
    assert result.exit_code == 2 and "unsupported export format" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_index_status_export_round_trip(tmp_path):
    db = tmp_path / "db"
    site = one_article(tmp_path)
    env = {"MMRAG_STORE__RAW_DIR": str(tmp_path / "raw")}
    result = runner.invoke(app, ["index", str(site), "--db", str(db), "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pages_ok"] == 1 and summary["chunks_total"] == 1

    result = runner.invoke(app, ["status", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    tables = {t["table"]: t for t in status["tables"]}
    assert tables[f"chunks__minilm__{MmragConfig().chunking.key()}"]["rows"] == 1
    assert tables["documents"]["rows"] == 1
    assert status["last_run"]["run_id"] == summary["run_id"]
    assert "minilm" in {e["name"] for e in status["embedders"]}

    human = runner.invoke(app, ["status", "--db", str(db)])
    assert f"chunks__minilm__{MmragConfig().chunking.key()}" in human.output and summary["run_id"] in human.output

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "--db", str(db), "--out", str(out), "--format", "parquet",
                                 "--version", f"index-{summary['run_id']}", "--table", f"chunks__minilm__{MmragConfig().chunking.key()}"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / f"chunks__minilm__{MmragConfig().chunking.key()}.parquet")
    assert frame.loc[0, "section_path"].tolist() == ["Tiny", "Part"]

    nothing = runner.invoke(app, ["index", str(tmp_path / "absent"), "--db", str(db), "--json"], env=env)
    assert nothing.exit_code == 1
    assert json.loads(nothing.stdout)["failures"][0]["kind"] == "source"


@pytest.mark.slow
def test_console_script_prints_clean_json_and_a_human_summary(tmp_path):
    """The installed ``mmrag`` script in a fresh process: stdout is pure JSON with --json."""
    exe = Path(sys.executable).with_name("mmrag")
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), CI="1")
    site = one_article(tmp_path)
    args = [str(exe), "index", str(site), "--db", str(tmp_path / "db")]
    env["MMRAG_STORE__RAW_DIR"] = str(tmp_path / "raw")
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["pages_ok"] == 1
    again = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "unchanged: nothing to embed" in again.stdout and "pages          1 ok" in again.stdout
