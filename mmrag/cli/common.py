"""What every ``mmrag`` subcommand module shares: the common options, config loading, errors, JSON output.

Kept apart from :mod:`mmrag.cli` so that subcommand modules can import it at the top without an
import cycle (``mmrag.cli`` mounts them at its end).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmrag.cli import prefect_server, signals
from mmrag.pipelines.embed import embedder_specs
from mmrag.pipelines.store import IndexStore, open_existing
from mmrag.reports import report
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
    """Defaults that make Prefect's ephemeral server dependable on small machines and keep it offline; start
    that server as this process's child (:mod:`mmrag.cli.prefect_server`: it never outlives mmrag).

    Call it before importing a flow module: the server boots while Prefect is imported.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect does not create missing parents of PREFECT_HOME, then its SQLite database fails to open.
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    try:
        prefect_server.ensure_server(on_lost=signals.abort)
    except RuntimeError as exc:
        fail(str(exc), code=1)


#: ``mmrag --debug`` (or ``MMRAG_DEBUG=1``): Prefect's error logs and full tracebacks stay on the console.
DEBUG = {"on": bool(os.environ.get("MMRAG_DEBUG"))}


class _PrefectErrorsOff(logging.Filter):
    """Drop Prefect's ERROR records (crash reports, tracebacks of a failed flow run) from a console handler:
    the exception reaches the command, which prints one ``mmrag: error:`` line for an expected error or
    the traceback of an unexpected one. Prefect's API handler, on its own loggers, still records them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.name.startswith("prefect")


def quiet_prefect_errors() -> None:
    """Install :class:`_PrefectErrorsOff` on the console handlers (after Prefect configured logging), unless --debug."""
    if DEBUG["on"]:
        return
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        if not any(isinstance(f, _PrefectErrorsOff) for f in handler.filters):
            handler.addFilter(_PrefectErrorsOff())


def check_embedder_name(cfg: MmragConfig) -> None:
    """Exit 2 with one line when ``embed.name`` is not a registered embedder (before any flow starts)."""
    known = [spec.name for spec in embedder_specs()]
    if cfg.embed.name not in known:
        fail(f"--embedder: unknown embedder {cfg.embed.name!r} (embed.name); known: {', '.join(known)}")


def open_existing_store(cfg: MmragConfig) -> IndexStore:
    """The index store at ``cfg.store.db_uri``; a local path with no database exits with a one-line error."""
    try:
        return open_existing(cfg.store.db_uri)
    except FileNotFoundError as exc:
        fail(f"--db: {exc}")
        raise  # unreachable: fail exits


def not_utf8(path: Path | str, exc: UnicodeDecodeError) -> str:
    """One line for a file that is not UTF-8: its name, the byte offset and the byte."""
    bad = exc.object[exc.start:exc.start + 1] if isinstance(exc.object, bytes) else b""
    return f"{path}: not UTF-8 text (byte offset {exc.start}: {bad!r})"


def load_entries(path: Path | str):
    """The eval set at ``path``; a missing or invalid file exits 2 with one line per problem."""
    try:
        return load_evalset(path)
    except UnicodeDecodeError as exc:
        fail(not_utf8(path, exc))
        raise  # unreachable
    except EvalSetError as exc:
        for line in exc.errors[:-1]:
            typer.echo(f"mmrag: error: {line}", err=True)
        fail(exc.errors[-1])
        raise  # unreachable


def report_module():
    """The report module (:mod:`mmrag.reports.report`)."""
    return report
