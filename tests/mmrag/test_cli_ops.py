"""``mmrag serve`` argument errors (its real run against a Prefect server is in tests/flows/test_deployments.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from mmrag.cli import app


def test_serve_without_sources_is_one_line():
    result = CliRunner().invoke(app, ["serve"], env={"MMRAG_OPS__SCHEDULE_SOURCES": "[]"})
    assert result.exit_code == 2 and "no sources" in result.output and result.output.strip().count("\n") == 0


def test_serve_rejects_an_invalid_config_value():
    result = CliRunner().invoke(app, ["serve", "x", "--config", "/nonexistent.yaml"])
    assert result.exit_code == 2 and "config file not found" in result.output
