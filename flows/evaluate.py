"""The ``evaluate`` Prefect flow: one eval run of one retrieval setting, written as a run directory.

Steps (each a Prefect task): load the eval set, pin and read the index (``open-index``), match
labels (``label``), embed the queries once (``embed-queries``), search (``search``), score with ranx
(``score``), write the run directory, tag the table versions read and append to ``eval_history``
(``write-run``). The flow ends with a table artifact of the aggregate metrics (``eval-metrics``) and
a markdown artifact summarising the run (``eval-summary``). ``mmrag eval run`` runs through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mmrag.eval.evalset import load_evalset
from mmrag.eval.results import write_run
from mmrag.eval.run import EvalResult, new_run_id, run_evaluation
from mmrag.config import MmragConfig
from mmrag.progress import quiet_libraries
from mmrag.pipelines.retrieve import Searcher


def _as_task(name: str, fn, *args: Any, **kwargs: Any) -> Any:
    """Run one eval step as a Prefect task named ``name`` (no caching: inputs are live objects)."""
    return task(fn, name=name, cache_policy=NO_CACHE)(*args, **kwargs)


def metrics_markdown(result: EvalResult, run_dir: Path, *, show: tuple[str, ...] = ("recall@5", "ndcg@5", "mrr")) -> str:
    """A short markdown summary of one eval run: setting, metrics per target and kind, labelling problems."""
    s = result.setting
    cols = [m for m in show if m in result.metrics] or result.metrics[:3]
    lines = [
        f"# Eval run {result.run_id}",
        "",
        f"{len(result.entries)} queries; embedder `{s['embedder']}`, chunking `{s['chunking']}`, target `{s['target']}`, "
        f"mode `{s['mode']}`, reranker `{s['reranker']}`, k text {s['text_k']} / image {s['image_k']}.",
        f"Run directory: `{run_dir}`",
        "",
        "| target | kind | queries | " + " | ".join(cols) + " |",
        "|---|---|---:|" + "---:|" * len(cols),
    ]
    for row in result.aggregates:
        lines.append(f"| {row['target']} | {row['kind']} | {row['n_queries']} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    if result.unmatched:
        lines += ["", f"**{len(result.unmatched)} labels match nothing** (not scored): "
                  + ", ".join(sorted({u['query_id'] for u in result.unmatched}))]
    if result.skipped:
        lines += ["", f"{len(result.skipped)} queries skipped: " + ", ".join(x["query_id"] for x in result.skipped)]
    return "\n".join(lines)


@flow(name="evaluate", log_prints=False, validate_parameters=False)
def evaluate_flow(
    queries: str,
    config: MmragConfig | dict | None = None,
    run_id: str | None = None,
    out_dir: str | None = None,
) -> dict:
    """Evaluate the eval set at ``queries`` against ``config.store.db_uri`` with the setting of ``config``.

    Writes ``<out_dir or eval.out_dir>/<run_id>/`` and returns ``{"run_id", "run_dir", "overall",
    "by_kind", "metrics", "unmatched", "skipped", "setting"}``.
    """
    if not isinstance(config, MmragConfig):
        config = MmragConfig.model_validate(config or {})
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    entries = _as_task("load-evalset", load_evalset, queries)
    searcher = Searcher(config)
    result = run_evaluation(entries, config, searcher=searcher, queries_path=queries, run_id=run_id, step=_as_task)
    history_uri = config.eval.history_uri or config.store.db_uri
    run_dir = _as_task(
        "write-run", write_run, result, out_dir or config.eval.out_dir, db_uri=config.store.db_uri,
        index_store=searcher.store, tag_versions=config.eval.tag_versions, history_uri=history_uri,
    )
    summary = result.summary
    logger.info("eval run %s: %d queries, written to %s", run_id, len(entries), run_dir)
    for target, values in summary["overall"].items():
        logger.info("%s: %s", target, ", ".join(f"{m} {values[m]:.3f}" for m in result.metrics))
    if result.unmatched:
        logger.warning("%d labels match nothing in the index (run `mmrag eval check`)", len(result.unmatched))
    create_table_artifact(
        key="eval-metrics",
        table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in result.aggregates],
        description=f"eval run {run_id}: aggregate metrics per target and kind",
    )
    create_markdown_artifact(key="eval-summary", markdown=metrics_markdown(result, run_dir),
                             description=f"eval run {run_id}")
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "metrics": result.metrics,
        "overall": summary["overall"],
        "by_kind": summary["by_kind"],
        "unmatched": result.unmatched,
        "skipped": result.skipped,
        "setting": result.setting,
        "corpus_fingerprint": result.corpus_fingerprint,
        "evalset_fingerprint": result.evalset_fingerprint,
    }


def run_evaluate(queries: str | Path, config: MmragConfig, *, out_dir: str | Path | None = None) -> dict:
    """Run the ``evaluate`` flow (see :func:`evaluate_flow`); returns its summary dict. Prefect's per-task INFO lines
    and libraries' chatter stay off the terminal unless ``ops.verbose``, as for the index flow."""
    quiet_libraries(config.ops.verbose)
    return evaluate_flow(queries=str(queries), config=config, out_dir=str(out_dir) if out_dir else None)
