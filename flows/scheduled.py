"""Flows for deployments: the scheduled incremental re-index and database maintenance.

Deployments (``prefect.yaml``, ``mmrag serve``) pass JSON parameters, so these flows take a config
file path and dotted overrides rather than a config object, and build the config where they run
(``MMRAG_*`` environment variables of the worker apply as usual). The index runs as a subflow
with the task runner ``ops.task_runner`` names.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from mmrag.config import load_config


@flow(name="scheduled-index", log_prints=False)
def scheduled_index_flow(
    sources: list[str] | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Incrementally re-index ``sources`` (default ``ops.schedule_sources``); returns the index summary dict."""
    from flows.index import run_index

    cfg = load_config(config_file, overrides or {})
    sources = list(sources or cfg.ops.schedule_sources)
    if not sources:
        raise ValueError("no sources: pass the `sources` parameter or set ops.schedule_sources")
    get_run_logger().info("scheduled index of %d sources into %s", len(sources), cfg.store.db_uri)
    return run_index(sources, cfg).to_dict()


@flow(name="maintain", log_prints=False)
def maintain_flow(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Compact, clean up, index and GC the database of the config, holding its write lock; returns the report."""
    from pipelines import guard, maintenance, store

    cfg = load_config(config_file, overrides or {})
    with guard.write_errors(cfg.store.db_uri), guard.write_lock(cfg.store.db_uri, cfg.ops.lock_timeout_s):
        report = maintenance.run_maintenance(store.IndexStore(cfg.store.db_uri), cfg.ops)
    get_run_logger().info("maintenance of %s: %s", cfg.store.db_uri, report)
    return report
