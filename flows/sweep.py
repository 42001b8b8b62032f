"""The ``sweep`` Prefect flow: evaluate a grid of retrieval settings, write one run directory and its report.

Tasks: ``load-evalset``, ``sweep`` (:func:`mmrag.eval.sweep.run_sweep`: tables built once per
(embedder, chunking), queries embedded once per embedder), ``write-sweep`` and ``report``. The flow
ends with a table artifact of every setting (``sweep-settings``), a markdown artifact with the
best setting per metric and its significance (``sweep-summary``) and a link artifact to the HTML
report (``sweep-report``, a file:// URL). ``mmrag eval sweep`` runs through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mmrag.eval.evalset import load_evalset
from mmrag.config import MmragConfig
from mmrag.progress import quiet_libraries
from mmrag.eval.sweep import run_sweep, sweep_markdown, write_sweep
from mmrag.flows.index import run_index
from mmrag.pipelines.store import IndexStore
from mmrag.reports.report import write_report


def _task(name: str, fn, *args: Any, **kwargs: Any) -> Any:
    return task(fn, name=name, cache_policy=NO_CACHE)(*args, **kwargs)


def _write_report(run_dir: Path, db_uri: str | None) -> Path:
    return write_report(run_dir, db_uri=db_uri)


@flow(name="sweep", log_prints=False, validate_parameters=False)
def sweep_flow(
    queries: str,
    grid: dict,
    config: MmragConfig | dict | None = None,
    sources: list[str] | None = None,
    index: bool = False,
    out_dir: str | None = None,
    report: bool = True,
) -> dict:
    """Sweep ``grid`` over the eval set at ``queries``; returns ``{"run_id", "run_dir", "report", "best", "rows", "timings_s"}``."""
    if not isinstance(config, MmragConfig):
        config = MmragConfig.model_validate(config or {})
    logger = get_run_logger()
    entries = _task("load-evalset", load_evalset, queries)
    sources = sources or ["data/sample/"]

    def index_group(group_config: MmragConfig, missing: bool) -> None:
        run_index(sources, group_config)

    result = _task("sweep", run_sweep, entries, config, grid, queries_path=queries,
                   index_group=index_group, index=index, log=logger.info)
    history_uri = config.eval.history_uri or config.store.db_uri
    run_dir = _task("write-sweep", write_sweep, result, out_dir or config.eval.out_dir, db_uri=config.store.db_uri,
                    index_store=IndexStore(config.store.db_uri), tag_versions=config.eval.tag_versions,
                    history_uri=history_uri)
    report_path = _task("report", _write_report, run_dir, config.store.db_uri) if report else None
    logger.info("sweep %s: %d settings in %s", result.run_id, len(result.rows), run_dir)
    create_table_artifact(
        key="sweep-settings",
        table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in result.rows],
        description=f"sweep {result.run_id}: one row per setting",
    )
    create_markdown_artifact(key="sweep-summary", markdown=sweep_markdown(result, run_dir, report_path),
                             description=f"sweep {result.run_id}")
    if report_path is not None:
        create_link_artifact(key="sweep-report", link=Path(report_path).resolve().as_uri(), link_text="sweep report",
                             description=f"HTML report of sweep {result.run_id}")
    return {"run_id": result.run_id, "run_dir": str(run_dir), "report": str(report_path) if report_path else None,
            "best": result.best, "rows": result.rows, "timings_s": result.timings_s,
            "best_setting_id": result.rows[result.best_index]["setting_id"] if result.rows else None}


def run_sweep_flow(queries: str | Path, grid: dict, config: MmragConfig, *, sources: list[str] | None = None,
                   index: bool = False, out_dir: str | Path | None = None, report: bool = True) -> dict:
    """Run the ``sweep`` flow (see :func:`sweep_flow`); returns its summary dict. Prefect's per-task INFO lines and
    libraries' chatter stay off the terminal unless ``ops.verbose``, as for the index flow."""
    quiet_libraries(config.ops.verbose)
    return sweep_flow(queries=str(queries), grid=grid, config=config, sources=sources, index=index,
                      out_dir=str(out_dir) if out_dir else None, report=report)
