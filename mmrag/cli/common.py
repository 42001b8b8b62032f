"""What every ``mmrag`` subcommand module shares: the common options, config loading, errors, JSON output.

Kept apart from :mod:`mmrag.cli` so that subcommand modules can import it at the top without an
import cycle (``mmrag.cli`` mounts them at its end).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmrag.pipelines.store import IndexStore, open_existing
from mmrag.eval.evalset import EvalSetError, load_evalset
from mmrag.config import ConfigError, MmragConfig, load_config

DbOption = Annotated[Optional[str], typer.Option("--db", help="LanceDB URI (a local directory or s3://…); default from config")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="YAML or TOML config file")]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]


def fail(message: str, code: int = 2) -> None:
    """Print ``mmrag: error: message`` on stderr and exit with ``code`` (no traceback)."""
    typer.echo(f"mmrag: error: {message}", err=True)
    raise typer.Exit(code)


def build_config(config_file: Path | None, overrides: dict[str, Any]) -> MmragConfig:
    """Load and validate the config; an invalid value exits with a one-line message naming the field."""
    try:
        return load_config(config_file, overrides)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def emit_json(data: Any) -> None:
    """Write ``data`` as JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")


def prepare_prefect_environment() -> None:
    """Defaults that make Prefect's ephemeral server dependable on small machines, and keep it offline."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect does not create missing parents of PREFECT_HOME, then its SQLite database fails to open.
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


def open_existing_store(cfg: MmragConfig) -> IndexStore:
    """The index store at ``cfg.store.db_uri``; a local path with no database exits with a one-line error."""
    try:
        return open_existing(cfg.store.db_uri)
    except FileNotFoundError as exc:
        fail(f"--db: {exc}")
        raise  # unreachable: fail exits


def load_entries(path: Path | str):
    """The eval set at ``path``; a missing or invalid file exits 2 with one line per problem."""
    try:
        return load_evalset(path)
    except EvalSetError as exc:
        for line in exc.errors[:-1]:
            typer.echo(f"mmrag: error: {line}", err=True)
        fail(exc.errors[-1])
        raise  # unreachable


def report_module():
    """The report module (imported on first use: it loads jinja2 and plotly)."""
    from mmrag.reports import report
    return report
