"""Operations commands: ``mmrag maintain`` (compaction, cleanup, vector index, blob GC) and ``mmrag serve``
(the scheduled incremental re-index and the sweep + gate as Prefect deployments served by this process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmrag.cli.common import (
    ConfigOption,
    DbOption,
    JsonOption,
    build_config,
    emit_json,
    fail,
    open_existing_store,
    prepare_prefect_environment,
)
from mmrag.pipelines import guard, maintenance, store


def maintain(
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    older_than_days: Annotated[Optional[float], typer.Option(help="remove untagged versions older than this")] = None,
    index_min_rows: Annotated[Optional[int], typer.Option(help="build a vector index from this many rows")] = None,
    index_type: Annotated[Optional[str], typer.Option(help="IVF_SQ | IVF_PQ | IVF_HNSW_SQ")] = None,
    gc: Annotated[Optional[bool], typer.Option("--gc/--no-gc", help="delete image bytes no image row references")] = None,
) -> None:
    """Compact tables, drop old untagged versions, build/refresh vector indexes, GC unreferenced image bytes."""
    cfg = build_config(config, {
        "store.db_uri": db, "ops.cleanup_older_than_days": older_than_days, "ops.vector_index_min_rows": index_min_rows,
        "ops.vector_index_type": index_type, "ops.gc_image_blobs": gc,
    })

    index_store = open_existing_store(cfg)
    try:
        with guard.write_errors(cfg.store.db_uri), guard.write_lock(cfg.store.db_uri, cfg.ops.lock_timeout_s):
            report = maintenance.run_maintenance(index_store, cfg.ops)
    except (guard.DatabaseLocked, guard.StoreWriteError) as exc:
        fail(str(exc), code=1)
    if json_output:
        emit_json(report)
        return
    typer.echo(f"maintenance of {cfg.store.db_uri} ({report['seconds']:.1f}s): "
               f"{report['blobs_deleted']} unreferenced image blobs deleted")
    for name, entry in report["tables"].items():
        index = entry["index"]
        typer.echo(f"  {name:<40} fragments {entry['fragments_before']:>4} -> "
                   f"{entry['fragments_before'] - entry['fragments_removed'] + entry['fragments_added']:<4} "
                   f"versions removed {entry['versions_removed']:<4} kept {entry['versions']:<4} "
                   f"index {index['action'] + ' ' + index['type'] if index else '-'}")


def serve(
    sources: Annotated[Optional[list[str]], typer.Argument(help="sources to re-index (default ops.schedule_sources)")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    cron: Annotated[Optional[str], typer.Option(help="cron schedule (default ops.schedule_cron)")] = None,
    name: Annotated[Optional[str], typer.Option(help="deployment name (default ops.deployment_name)")] = None,
    sweep_gate: Annotated[bool, typer.Option("--sweep-gate/--no-sweep-gate", help="also serve the sweep + gate deployment")] = True,
    sweep_cron: Annotated[Optional[str], typer.Option(help="cron of the sweep + gate (default ops.sweep_cron)")] = None,
) -> None:
    """Serve the scheduled incremental re-index and the sweep + gate as Prefect deployments (runs on their cron, or when triggered).

    The sweep + gate takes its grid, baseline and metrics from ``ops.sweep_grid``,
    ``ops.gate_baseline`` and ``ops.gate_metrics``; a failed gate fails its flow run. Needs a
    Prefect API (``PREFECT_API_URL``) that outlives this process: a served deployment on the
    ephemeral API would vanish with it.
    """
    cfg = build_config(config, {"store.db_uri": db, "ops.schedule_cron": cron, "ops.deployment_name": name,
                                "ops.sweep_cron": sweep_cron})
    sources = list(sources or cfg.ops.schedule_sources)
    if not sources:
        fail("no sources: pass SOURCE… or set ops.schedule_sources")
    prepare_prefect_environment()
    from prefect import serve as prefect_serve
    from prefect.schedules import Cron

    from mmrag.flows.scheduled import scheduled_index_flow, sweep_gate_flow  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

    config_file = str(config.resolve()) if config else None
    deployments = [scheduled_index_flow.to_deployment(
        name=cfg.ops.deployment_name,
        schedule=Cron(cfg.ops.schedule_cron, timezone=cfg.ops.schedule_timezone),
        parameters={"sources": sources, "config_file": config_file, "overrides": {"store.db_uri": cfg.store.db_uri}},
        concurrency_limit=1,
        description="Incremental re-index of the configured sources (mmrag serve)",
        tags=["mmrag", "index"],
    )]
    typer.echo(f"serving deployment scheduled-index/{cfg.ops.deployment_name} on cron {cfg.ops.schedule_cron!r} "
               f"({cfg.ops.schedule_timezone}) for {len(sources)} sources into {cfg.store.db_uri}", err=True)
    if sweep_gate:
        deployments.append(sweep_gate_flow.to_deployment(
            name=cfg.ops.sweep_deployment_name,
            schedule=Cron(cfg.ops.sweep_cron, timezone=cfg.ops.schedule_timezone),
            parameters={"queries": cfg.eval.queries, "grid": cfg.ops.sweep_grid, "baseline": cfg.ops.gate_baseline,
                        "metrics": cfg.ops.gate_metrics, "tolerance": cfg.eval.tolerance, "db": cfg.store.db_uri,
                        "sources": sources, "config_file": config_file},
            concurrency_limit=1,
            description="Evaluation sweep, then the quality gate of its best setting against the baseline (mmrag serve)",
            tags=["mmrag", "eval", "gate"],
        ))
        typer.echo(f"serving deployment sweep-gate/{cfg.ops.sweep_deployment_name} on cron {cfg.ops.sweep_cron!r}: "
                   f"grid {cfg.ops.sweep_grid}, gate {', '.join(cfg.ops.gate_metrics)} vs {cfg.ops.gate_baseline}",
                   err=True)
    prefect_serve(*deployments, print_starting_message=False)


def register(app: typer.Typer) -> None:
    """Mount the operations commands on the main ``mmrag`` app."""
    app.command()(maintain)
    app.command()(serve)
