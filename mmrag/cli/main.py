"""``mmrag main``: the main job of ``make run`` -- index, sweep, answer quality, one report.

Steps: index ``data/sample/`` (the ``index`` flow, incremental), sweep ``eval/grids/sample.yaml`` on
``data/eval/sample.jsonl`` (the ``sweep`` flow), generate and score answers for the first
``--answers`` queries with the embedded LLM (``llamacpp``; skipped with a printed reason when it
cannot load), then render the sweep's report with the answers and copy it to
``reports/latest/index.html``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmrag.cli.common import (
    ConfigOption,
    DbOption,
    build_config,
    fail,
    load_entries,
    prepare_prefect_environment,
    quiet_prefect_errors,
    report_module,
)
from mmrag.eval.sweep import GridError, load_grid


def main_command(
    source: Annotated[Optional[list[str]], typer.Option("--source", help="sources to index (default data/sample/)")] = None,
    queries: Annotated[Path, typer.Option("--queries", help="eval set (JSON Lines)")] = Path("data/eval/sample.jsonl"),
    grid: Annotated[Path, typer.Option("--grid", help="sweep grid file")] = Path("eval/grids/sample.yaml"),
    llm: Annotated[str, typer.Option("--llm", help="LLM of the answer step (BACKEND:MODEL)")] = "llamacpp:qwen2.5-0.5b",
    answers: Annotated[int, typer.Option("--answers", min=0, help="queries answered by the LLM (0: skip the answer step)")] = 4,
    answer_budget: Annotated[float, typer.Option("--answer-budget", min=0, help="seconds for the answer step; later queries are recorded as not run")] = 180.0,
    latest: Annotated[Path, typer.Option("--latest", help="where the report is copied")] = Path("reports/latest/index.html"),
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Index the sample corpus, sweep retrieval settings, score LLM answers, write reports/latest/index.html."""

    cfg = build_config(config, {"store.db_uri": db, "progress": False})
    sources = list(source or ["data/sample/"])
    try:
        grid_data = load_grid(grid)
    except GridError as exc:
        fail(str(exc))
        return
    entries = load_entries(queries)
    prepare_prefect_environment()
    started = time.perf_counter()
    from mmrag.flows.index import run_index  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

    quiet_prefect_errors()

    typer.echo(f"[1/4] indexing {', '.join(sources)} into {cfg.store.db_uri}")
    summary = run_index(sources, cfg)
    typer.echo(f"      {summary.pages_ok} pages ok")
    typer.echo(f"[2/4] sweeping {grid} on {queries}")
    from mmrag.flows.sweep import run_sweep_flow  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

    result = run_sweep_flow(queries, grid_data, cfg, sources=sources, out_dir=cfg.eval.out_dir, report=False)
    run_dir = Path(result["run_dir"])
    for b in result["best"]:
        typer.echo(f"      best {b['metric']:<16} {b['value']:.3f}  {b['setting_id']}")
    typer.echo(f"[3/4] answers with {llm} on {answers} queries")
    if answers <= 0:
        typer.echo("      skipped: --answers 0")
    else:
        try:
            from mmrag.eval.answers import answer_step  # deferred: ragas loads an LLM stack (~6 s)

            reason = answer_step(run_dir, entries, cfg, llm=llm, limit=answers, base_dir=queries.parent, budget_s=answer_budget)
        except Exception as exc:  # noqa: BLE001 - the retrieval report is still worth writing
            reason = f"failed: {type(exc).__name__}: {exc}"
        typer.echo(f"      {reason}")
    typer.echo("[4/4] report")
    path = report_module().write_report(run_dir, db_uri=cfg.store.db_uri)
    latest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, latest)
    typer.echo(f"done in {time.perf_counter() - started:.0f} s; run directory {run_dir}")
    typer.echo(f"report: {latest.resolve()}")
