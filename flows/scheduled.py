"""Flows for deployments: the scheduled incremental re-index, database maintenance and the sweep + gate.

Deployments (``prefect.yaml``, ``mmrag serve``) pass JSON parameters, so these flows take a config
file path and dotted overrides rather than a config object, and build the config where they run
(``MMRAG_*`` environment variables of the worker apply as usual). The index runs as a subflow
with the task runner ``ops.task_runner`` names.

``sweep-gate`` runs the ``sweep`` flow as a subflow, then gates its chosen setting (the sweep's run
directory holds the best setting's run) against a baseline with :func:`mmrag.eval.gate.check_gate`. It
publishes the gate as a table artifact (``gate-result``), a markdown artifact (``gate-summary``) and
a link to the sweep's HTML report (``gate-report``), and raises :class:`GateFailed` when the gate
fails, so the flow run ends Failed and Prefect's notifications on failed runs fire.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mmrag.config import load_config
from mmrag.flows.index import run_index
from mmrag.pipelines import guard, maintenance, store
from mmrag.eval.diff import worst_regressions
from mmrag.eval.gate import check_gate
from mmrag.eval.results import load_run
from mmrag.eval.gate import format_gate_table, gate_markdown, load_baseline, parse_metric_spec
from mmrag.eval.sweep import load_grid, validate_grid
from mmrag.flows.sweep import sweep_flow


class GateFailed(RuntimeError):
    """A gated metric dropped by more than the tolerance and significantly: the scheduled run must fail."""


@flow(name="scheduled-index", log_prints=False)
def scheduled_index_flow(
    sources: list[str] | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Incrementally re-index ``sources`` (default ``ops.schedule_sources``); returns the index summary dict."""
    cfg = load_config(config_file, overrides or {})
    sources = list(sources or cfg.ops.schedule_sources)
    if not sources:
        raise ValueError("no sources: pass the `sources` parameter or set ops.schedule_sources")
    get_run_logger().info("scheduled index of %d sources into %s", len(sources), cfg.store.db_uri)
    return run_index(sources, cfg).to_dict()


@flow(name="maintain", log_prints=False)
def maintain_flow(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Compact, clean up, index and GC the database of the config, holding its write lock; returns the report."""
    cfg = load_config(config_file, overrides or {})
    with guard.write_errors(cfg.store.db_uri), guard.write_lock(cfg.store.db_uri, cfg.ops.lock_timeout_s):
        report = maintenance.run_maintenance(store.IndexStore(cfg.store.db_uri), cfg.ops)
    get_run_logger().info("maintenance of %s: %s", cfg.store.db_uri, report)
    return report


def _gate_run(run_dir: str, baseline: dict, metrics: list[str], eval_cfg: Any) -> Any:

    return check_gate(load_run(run_dir), baseline, metrics, tolerance=eval_cfg.tolerance, max_p=eval_cfg.max_p,
                      stat_test=eval_cfg.stat_test, n_permutations=eval_cfg.n_permutations,
                      random_seed=eval_cfg.random_seed)


@flow(name="sweep-gate", log_prints=False)
def sweep_gate_flow(
    queries: str | None = None,
    grid: dict[str, list[Any]] | str | None = None,
    baseline: str | None = None,
    metrics: list[str] | None = None,
    tolerance: float | None = None,
    db: str | None = None,
    sources: list[str] | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    report: bool = True,
) -> dict:
    """Sweep ``grid`` over the eval set ``queries``, then gate the chosen setting against ``baseline`` on ``metrics``.

    Unset parameters come from the config: ``eval.queries``, ``ops.sweep_grid`` (``grid`` may be a
    grid file path or the grid itself), ``ops.gate_baseline``, ``ops.gate_metrics``,
    ``eval.tolerance``, ``store.db_uri``. Raises :class:`GateFailed` after publishing the artifacts
    when the gate fails; returns ``{"run_id", "run_dir", "report", "best_setting_id", "baseline", "gate"}``.
    """

    cfg = load_config(config_file, {**(overrides or {}), "store.db_uri": db, "eval.queries": queries,
                                    "eval.tolerance": tolerance})
    metrics = list(metrics or cfg.ops.gate_metrics)
    for spec in metrics:
        parse_metric_spec(spec)
    baseline_path = baseline or cfg.ops.gate_baseline
    baseline_doc = load_baseline(baseline_path)  # a missing baseline fails before the sweep, not after
    grid_data = load_grid(grid or cfg.ops.sweep_grid) if isinstance(grid, str) or grid is None else validate_grid(grid)
    logger = get_run_logger()
    swept = sweep_flow(queries=cfg.eval.queries, grid=grid_data, config=cfg,
                       sources=list(sources or cfg.ops.schedule_sources) or None, report=report)
    result = task(_gate_run, name="gate", cache_policy=NO_CACHE)(swept["run_dir"], baseline_doc, metrics, cfg.eval)
    logger.info("gate of sweep %s (best setting %s) vs %s:\n%s", swept["run_id"], swept["best_setting_id"],
                baseline_path, format_gate_table(result))
    create_table_artifact(
        key="gate-result",
        table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in result.rows],
        description=f"gate of sweep {swept['run_id']} vs {baseline_path}: {'FAILED' if result.failed else 'passed'}",
    )
    regressions = None
    if result.failed:  # the worst regressed queries of each failing metric, baseline -> run, in the summary
        regressions = {f"{r['target']}:{r['metric']}": worst_regressions(baseline_doc, swept["run_dir"], f"{r['target']}:{r['metric']}")
                       for r in result.rows if r["status"] == "FAIL"}
    create_markdown_artifact(key="gate-summary", description=f"gate of sweep {swept['run_id']}", markdown=gate_markdown(
        result, run_id=f"{swept['run_id']} (setting `{swept['best_setting_id']}`)", baseline=baseline_path,
        report=swept["report"], regressions=regressions))
    if swept["report"]:
        create_link_artifact(key="gate-report", link=Path(swept["report"]).resolve().as_uri(),
                             link_text="sweep report", description=f"HTML report of sweep {swept['run_id']}")
    if result.failed:
        failing = [f"{r['target']}:{r['metric']} {r['delta']:+.3f} (p {r['p_value']:.3g})"
                   for r in result.rows if r["status"] == "FAIL"]
        raise GateFailed(f"gate failed for sweep {swept['run_id']} vs {baseline_path}: {', '.join(failing)}")
    return {"run_id": swept["run_id"], "run_dir": swept["run_dir"], "report": swept["report"],
            "best_setting_id": swept["best_setting_id"], "baseline": baseline_path, "gate": result.to_dict()}
