"""``mmrag eval …``: check, derive, run, baseline and gate (the typer app :data:`eval_app`, mounted in mmrag.cli).

Exit codes: 0 ok; 1 the check or gate found a problem (unmatched labels, a significant drop); 2 the
command could not run (bad arguments, eval set or baseline, missing database, fingerprint mismatch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmrag.cli.common import (
    ConfigOption,
    DbOption,
    JsonOption,
    build_config,
    emit_json,
    fail,
    load_entries,
    open_existing_store,
    check_embedder_name,
    prepare_prefect_environment,
    quiet_prefect_errors,
    report_module,
)
from mmrag.cli.main import main_command
from mmrag.cli.search import ImageScoringOption
from mmrag.config import EmbedConfig
from mmrag.eval.beir import BeirError, import_beir
from mmrag.eval.derive import KINDS, derive_entries
from mmrag.eval.diff import diff_runs, format_diff, format_regressions, worst_regressions
from mmrag.eval.evalset import dump_evalset
from mmrag.eval.export import ExportError, beir_from_index, beir_from_run, export_trec
from mmrag.eval.gate import FingerprintMismatch, GateError, check_gate, format_gate_table, load_baseline, write_baseline
from mmrag.eval.labels import label_entries, unmatched_labels
from mmrag.eval.metrics import metric_names
from mmrag.eval.querygen import CachedLlm, GenerateError, cache_path, generate_set
from mmrag.eval.results import load_run
from mmrag.eval.run import open_index
from mmrag.eval.sweep import GridError, expand_grid, load_grid, point_config
from mmrag.pipelines.embed import EmbedderUnavailable, create_embedder
from mmrag.pipelines.guard import DatabaseLocked, StoreWriteError
from mmrag.pipelines.llm import make_backend, parse_llm_spec
from mmrag.pipelines.llm.base import LlmError
from mmrag.pipelines.retrieve import SearchError, Searcher
from mmrag.pipelines.store import chunks_table_name, images_table_name

eval_app = typer.Typer(
    name="eval",
    help="Evaluate retrieval: check labels, derive query sets, run, baseline and gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EmbedderOption = Annotated[Optional[str], typer.Option("--embedder", help="embedder whose tables are evaluated (default from config)")]
ChunkingOption = Annotated[Optional[str], typer.Option("--chunking", help="chunk table's chunking: paragraph | window | tokens")]


def _with_target(cfg, target: str):
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"target": target})})


def _labelled_target(entries) -> str:
    """The targets an eval set has labels for: ``text``, ``images`` or ``both``."""
    wants_text = any(e.relevant for e in entries)
    wants_images = any(e.relevant_images for e in entries)
    return "both" if wants_text and wants_images else ("text" if wants_text else "images")


@eval_app.command("check")
def check(
    queries: Annotated[Path, typer.Argument(help="eval set (JSON Lines)")],
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    embedder: EmbedderOption = None,
    chunking: ChunkingOption = None,
) -> None:
    """Validate QUERIES against the index: list every label that matches nothing (exit 1 when any)."""
    cfg = build_config(config, {"store.db_uri": db, "embed.name": embedder, "chunking.strategy": chunking})
    entries = load_entries(queries)
    open_existing_store(cfg)

    cfg = _with_target(cfg, _labelled_target(entries))
    try:
        snapshot = open_index(Searcher(cfg), cfg)
    except SearchError as exc:
        fail(str(exc))
        return
    labels = label_entries(entries, snapshot.corpus)
    bad = unmatched_labels(labels)
    n_labels = sum(len(e.relevant) + len(e.relevant_images) for e in entries)
    if json_output:
        emit_json(
            {
                "queries": str(queries), "entries": len(entries), "labels": n_labels, "tables": snapshot.tables,
                "unmatched": [{"query_id": m.entry_id, "target": m.target, "label": m.index, "label_value": m.label,
                               "reason": m.reason} for m in bad],
                "relevant": {qid: {t: len(ids) for t, ids in lab.relevant.items()} for qid, lab in labels.items()},
            }
        )
    else:
        tables = ", ".join(f"{name} ({'chunks' if t == 'text' else 'images'})" for t, name in snapshot.tables.items())
        typer.echo(f"checked {len(entries)} entries, {n_labels} labels against {tables}")
        for m in bad:
            typer.echo(f"  {m.entry_id}: {m.target} label {m.index}: {m.reason}")
        typer.echo(f"{len(bad)} of {n_labels} labels match nothing" if bad else "every label matches")
    raise typer.Exit(1 if bad else 0)


@eval_app.command("derive")
def derive(
    out: Annotated[Path, typer.Option("--out", help="eval set to write (JSON Lines)")],
    kind: Annotated[Optional[list[str]], typer.Option("--kind", help="caption (caption→image) | heading (heading→section); repeatable, default both")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    embedder: EmbedderOption = None,
    chunking: ChunkingOption = None,
) -> None:
    """Build caption→image and heading→section query sets from the index, warning about leakage."""

    kinds = list(kind or KINDS)
    for k in kinds:
        if k not in KINDS:
            fail(f"--kind: unknown kind {k!r} (use caption or heading)")
    cfg = build_config(config, {"store.db_uri": db, "embed.name": embedder, "chunking.strategy": chunking})
    index_store = open_existing_store(cfg)
    label = cfg.search.table_embedder or cfg.embed.name
    chunk_table, image_table = chunks_table_name(label, cfg.chunking.key()), images_table_name(label)
    chunks: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    if "heading" in kinds or "caption" in kinds:
        if not index_store.has_table(chunk_table):
            fail(f"no table {chunk_table} in {cfg.store.db_uri} (index with --embedder {label} --chunking {cfg.chunking.strategy})")
        chunks = index_store.read_table(chunk_table, ["doc_url", "section_path", "position", "char_start", "text"]).to_pylist()
    if "caption" in kinds:
        if not index_store.has_table(image_table):
            fail(f"no table {image_table} in {cfg.store.db_uri}")
        images = index_store.read_table(
            image_table, ["id", "doc_url", "src_url", "position", "caption", "surrogate_text", "vector_source"]).to_pylist()
    entries, report = derive_entries(chunks, images, kinds=kinds, embedder=label)
    if not entries:
        fail("nothing to derive: the index has no captions or section headings")
    dump_evalset(entries, out)
    counts = {k: sum(e.kind == k for e in entries) for k in kinds}
    if json_output:
        emit_json({"out": str(out), "entries": len(entries), "kinds": counts,
                   "leakage": {k: v for k, v in report.items() if k != "warnings"}, "warnings": report["warnings"]})
    else:
        typer.echo(f"wrote {len(entries)} entries to {out} ({', '.join(f'{n} {k}' for k, n in counts.items())})")
    for warning in report["warnings"]:
        typer.echo(f"mmrag: warning: {warning}", err=True)


@eval_app.command("run")
def run(
    queries: Annotated[Optional[Path], typer.Option("--queries", help="eval set (JSON Lines); default eval.queries")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    target: Annotated[Optional[str], typer.Option("--target", help="text | images | both (default: both)")] = None,
    k: Annotated[Optional[int], typer.Option("--k", min=1, help="hits per target (default: search.text_k / image_k)")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="minimum score (softmax score, or cosine in cosine mode)")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="softmax | cosine")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="softmax temperature of both targets")] = None,
    reranker: Annotated[Optional[str], typer.Option("--reranker", help="none | hybrid | llm | cross-encoder | model-score")] = None,
    image_scoring: ImageScoringOption = None,
    embedder: EmbedderOption = None,
    chunking: ChunkingOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="parent of the run directory (default: reports/runs)")] = None,
) -> None:
    """Evaluate one retrieval setting through the `evaluate` flow; writes <out>/<run_id>/ and appends eval_history."""
    overrides: dict[str, Any] = {
        "store.db_uri": db, "embed.name": embedder, "chunking.strategy": chunking, "eval.target": target,
        "eval.queries": str(queries) if queries else None, "eval.out_dir": str(out) if out else None,
        "search.mode": mode, "search.reranker": reranker, "search.text_k": k, "search.image_k": k,
        "search.text_temperature": temperature, "search.image_temperature": temperature, "search.image_scoring": image_scoring,
    }
    cfg = build_config(config, overrides)
    if threshold is not None:
        fields = ["search.cosine_threshold"] if cfg.search.mode == "cosine" else ["search.text_threshold", "search.image_threshold"]
        cfg = build_config(config, {**overrides, **{f: threshold for f in fields}})

    try:
        metric_names(cfg.eval.cutoffs)
    except ValueError as exc:
        fail(f"eval.cutoffs: {exc}")
    entries_path = Path(cfg.eval.queries)
    entries = load_entries(entries_path)  # fail fast, one line per bad entry
    if target is None and cfg.eval.target == "both":  # a set with text labels only needs no image table, and so on
        cfg = _with_target(cfg, _labelled_target(entries))
    open_existing_store(cfg)
    prepare_prefect_environment()
    from mmrag.flows.evaluate import run_evaluate  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

    quiet_prefect_errors()

    try:
        summary = run_evaluate(entries_path, cfg, out_dir=cfg.eval.out_dir)
    except SearchError as exc:
        fail(str(exc))
        return
    scored = sum(v.get("n_queries", 0) for v in summary["overall"].values())
    if json_output:
        report_path = _write_run_report(summary["run_dir"], cfg.store.db_uri)
        emit_json({**summary, "report": str(report_path) if report_path else None})
        if not scored:
            fail(_nothing_scored(summary, entries_path), code=1)
        return
    metrics = summary["metrics"]
    show = [m for m in ("recall@1", "recall@5", "recall@10", "ndcg@10", "hit_rate@5", "mrr") if m in metrics] or metrics[:6]
    typer.echo(f"eval run {summary['run_id']} -> {summary['run_dir']}")
    typer.echo(f"  {'target':<7}{'kind':<10}{'n':>4}" + "".join(f"{m:>11}" for m in show))
    rows = [(t, "all", v) for t, v in summary["overall"].items()]
    rows += [(t, kind, v) for kind, per_target in summary["by_kind"].items() for t, v in per_target.items()]
    for t, kind, values in rows:
        typer.echo(f"  {t:<7}{kind:<10}{values['n_queries']:>4}" + "".join(f"{values[m]:>11.3f}" for m in show))
    if summary["unmatched"]:
        typer.echo(f"mmrag: warning: {len(summary['unmatched'])} labels match nothing and were not scored "
                   f"(see `mmrag eval check {entries_path}`)", err=True)
    if summary["skipped"]:
        typer.echo(f"mmrag: warning: {len(summary['skipped'])} queries skipped: {summary['skipped'][0]['reason']}", err=True)
    report_path = _write_run_report(summary["run_dir"], cfg.store.db_uri)
    if report_path is not None:
        typer.echo(f"report: {report_path.resolve()}")
    if not scored:
        fail(_nothing_scored(summary, entries_path), code=1)


def _nothing_scored(summary: dict, entries_path: Path) -> str:
    return (f"no query was scored: {len(summary['unmatched'])} labels match nothing in the index "
            f"(`mmrag eval check {entries_path}` lists them; was the corpus indexed with this --embedder/--chunking?)")


@eval_app.command("baseline")
def baseline(
    run_dir: Annotated[Path, typer.Option("--run", help="eval run directory")],
    out: Annotated[Path, typer.Option("--out", help="baseline file to write (e.g. eval/baselines/NAME.json)")],
    json_output: JsonOption = False,
) -> None:
    """Write a baseline (fingerprints, setting, aggregates, per-query values) from an eval run."""

    try:
        path = write_baseline(run_dir, out)
    except ValueError as exc:
        fail(str(exc))
        return
    if json_output:
        emit_json({"baseline": str(path), "run": str(run_dir)})
    else:
        typer.echo(f"wrote baseline {path} from {run_dir}")


@eval_app.command("gate")
def gate(
    run_dir: Annotated[Path, typer.Option("--run", help="eval run directory")],
    baseline_file: Annotated[Path, typer.Option("--baseline", help="baseline file (mmrag eval baseline)")],
    metric: Annotated[list[str], typer.Option("--metric", help="gated metric, e.g. recall@5 or text:ndcg@10 (repeatable)")],
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", min=0, help="allowed absolute drop (default 0.02)")] = None,
    max_p: Annotated[Optional[float], typer.Option("--max-p", help="significance level (default 0.05)")] = None,
    stat_test: Annotated[Optional[str], typer.Option("--stat-test", help="student (paired t-test) | fisher (randomization)")] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Exit 1 when a gated metric dropped by more than the tolerance and significantly (p < max-p)."""
    cfg = build_config(config, {"eval.tolerance": tolerance, "eval.max_p": max_p, "eval.stat_test": stat_test})

    try:
        record = load_run(run_dir)
        base = load_baseline(baseline_file)
        result = check_gate(
            record, base, metric, tolerance=cfg.eval.tolerance, max_p=cfg.eval.max_p, stat_test=cfg.eval.stat_test,
            n_permutations=cfg.eval.n_permutations, random_seed=cfg.eval.random_seed,
        )
    except FingerprintMismatch as exc:
        fail(str(exc))
        return
    except (GateError, ValueError, KeyError) as exc:
        fail(str(exc).strip("'\""))
        return
    if json_output:
        emit_json({"run": str(run_dir), "baseline": str(baseline_file), **result.to_dict()})
    else:
        typer.echo(f"run {record.run_id} vs baseline {baseline_file} (from run {base.get('run_id')})")
        typer.echo(format_gate_table(result))
        if result.failed:

            for row in (r for r in result.rows if r["status"] == "FAIL"):
                spec = f"{row['target']}:{row['metric']}"
                typer.echo(format_regressions(worst_regressions(base, record, spec, n=5), spec))
    raise typer.Exit(1 if result.failed else 0)


# --------------------------------------------------------------------------- reports and sweeps (part B)


def _write_run_report(run_dir: str | Path, db_uri: str | None = None) -> Path | None:
    try:
        return report_module().write_report(run_dir, db_uri=db_uri)
    except Exception as exc:  # noqa: BLE001 - the run is written; a report failure must not lose it
        typer.echo(f"mmrag: warning: report not written: {exc}", err=True)
        return None


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="eval run or sweep directory")],
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="run directory to compare against (default: none; sweeps: best setting)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default: RUN_DIR/index.html)")] = None,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write one self-contained HTML report (opens offline) of an eval run or sweep."""
    try:
        path = report_module().write_report(run_dir, out=out, baseline_dir=baseline, db_uri=db)
    except ValueError as exc:
        fail(str(exc))
        return
    if json_output:
        emit_json({"report": str(path), "run": str(run_dir)})
    else:
        typer.echo(f"report: {path.resolve()}")


@eval_app.command("sweep")
def sweep(
    grid: Annotated[Path, typer.Option("--grid", help="grid file (YAML/JSON): k, threshold, temperature, mode, reranker, embedder, chunking, chunk_size")] = Path("eval/grids/sample.yaml"),
    queries: Annotated[Optional[Path], typer.Option("--queries", help="eval set (JSON Lines); default eval.queries")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    source: Annotated[Optional[list[str]], typer.Option("--source", help="sources indexed for tables the grid needs (default data/sample/)")] = None,
    index: Annotated[bool, typer.Option("--index/--no-index", help="run the indexer once per (embedder, chunking) even when tables exist")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="parent of the run directory (default: reports/runs)")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="text | images | both (default: both)")] = None,
    report_out: Annotated[Optional[Path], typer.Option("--report", help="also copy the HTML report here (e.g. reports/latest/index.html)")] = None,
) -> None:
    """Evaluate every setting of a grid (indexes built once, queries embedded once); writes one run directory + report."""

    cfg = build_config(config, {"store.db_uri": db, "eval.target": target, "eval.queries": str(queries) if queries else None,
                                "eval.out_dir": str(out) if out else None})
    try:
        grid_data = load_grid(grid)
        for point in expand_grid(grid_data):
            point_config(cfg, point)
    except GridError as exc:
        fail(str(exc))
        return
    except ValueError as exc:  # pydantic ValidationError: a grid value out of range
        fail(f"{grid}: {str(exc).splitlines()[0]} {str(exc).splitlines()[-1] if len(str(exc).splitlines()) > 1 else ''}".strip())
        return
    entries_path = Path(cfg.eval.queries)
    load_entries(entries_path)
    prepare_prefect_environment()
    from mmrag.flows.sweep import run_sweep_flow  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

    quiet_prefect_errors()
    try:
        summary = run_sweep_flow(entries_path, grid_data, cfg, sources=list(source or ["data/sample/"]), index=index,
                                 out_dir=cfg.eval.out_dir)
    except SearchError as exc:
        fail(str(exc))
        return
    if report_out and summary["report"]:
        import shutil

        Path(report_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary["report"], report_out)
        summary["report_copy"] = str(report_out)
    if json_output:
        emit_json({k: v for k, v in summary.items() if k != "rows"} | {"n_settings": len(summary["rows"])})
        return
    typer.echo(f"sweep {summary['run_id']}: {len(summary['rows'])} settings -> {summary['run_dir']}")
    for b in summary["best"]:
        typer.echo(f"  best {b['metric']:<16} {b['value']:.3f}  {b['setting_id']}  "
                   f"(significantly better than {b['wins']} of {b['wins'] + b['losses'] + b['ties']} others)")
    typer.echo(f"  timings: {summary['timings_s']}")
    if summary["report"]:
        typer.echo(f"report: {Path(report_out or summary['report']).resolve()}")


@eval_app.command("answers")
def answers(
    llm: Annotated[list[str], typer.Option("--llm", help="BACKEND:MODEL, repeatable (e.g. llamacpp:qwen2.5-0.5b, ollama:llama3.2-vision)")],
    queries: Annotated[Optional[Path], typer.Option("--queries", help="eval set (JSON Lines); default eval.queries")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="answer from this eval run's hits instead of a new eval run")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="answer only the first N text queries")] = None,
    judge: Annotated[Optional[str], typer.Option(
        "--judge", help="judge LLM for faithfulness / answer relevancy: llamacpp:MODEL (the embedded model, served on "
        "127.0.0.1 for the run), ollama:MODEL or openai:MODEL, each optionally @URL of its /v1 endpoint; 'none': off "
        "(default eval.judge)")] = None,
    judge_images: Annotated[Optional[bool], typer.Option(
        "--judge-images/--no-judge-images", help="also give the judge the retrieved images (multimodal faithfulness / "
        "relevance; the judge must accept images)")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=8, help="answer length budget (default llm.max_tokens)")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    k: Annotated[Optional[int], typer.Option("--k", min=1, help="text hits retrieved (default search.text_k)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="parent of the run directory (default: reports/runs)")] = None,
) -> None:
    """Generate answers with each --llm from retrieved contexts and score them with ragas (ROUGE, BLEU, chrF, similarity,
    context P/R; with --judge also faithfulness and answer relevancy)."""
    overrides: dict[str, Any] = {"store.db_uri": db, "eval.queries": str(queries) if queries else None, "eval.target": "text",
                                 "eval.out_dir": str(out) if out else None, "search.text_k": k, "llm.max_tokens": max_tokens,
                                 "eval.judge_images": judge_images}
    cfg = build_config(config, overrides)
    if cfg.eval.judge_images:  # the judge's images are the run's image hits
        cfg = build_config(config, {**overrides, "eval.target": "both"})
    from mmrag.eval.judge import parse_judge_spec  # deferred: ragas loads an LLM stack (~6 s)

    judge_text = judge or cfg.eval.judge
    judge_spec = None
    if judge_text and judge_text.strip().lower() != "none":
        try:
            judge_spec = parse_judge_spec(judge_text, cfg.llm)
        except LlmError as exc:
            fail(str(exc))
            return
        if judge_spec.backend == "llamacpp" and cfg.eval.judge_images:
            fail("--judge-images: the embedded llama.cpp judge reads text only; use a vision model (ollama:MODEL or openai:MODEL@URL)")
    entries_path = Path(cfg.eval.queries)
    entries = load_entries(entries_path)
    from mmrag.eval.answers import answer_run_dir, answer_summary  # deferred: ragas loads an LLM stack (~6 s)

    if run_dir is None:
        open_existing_store(cfg)
        prepare_prefect_environment()
        from mmrag.flows.evaluate import run_evaluate  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

        quiet_prefect_errors()
        try:
            run_dir = Path(run_evaluate(entries_path, cfg, out_dir=cfg.eval.out_dir)["run_dir"])
        except SearchError as exc:
            fail(str(exc))
            return
    embedder = create_embedder(cfg.embed)
    rows = answer_run_dir(run_dir, entries, cfg, llm, limit=limit, embed=embedder.embed_texts,
                          log=lambda m: typer.echo(m, err=True), judge=judge_spec)
    summary = answer_summary(rows)
    report_path = _write_run_report(run_dir, cfg.store.db_uri)
    if json_output:
        emit_json({"run_dir": str(run_dir), "answers": str(Path(run_dir) / "answers.parquet"), "summary": summary,
                   "report": str(report_path) if report_path else None})
        return
    typer.echo(f"answers -> {Path(run_dir) / 'answers.parquet'}")
    for name, stats in summary.items():
        typer.echo(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    if report_path is not None:
        typer.echo(f"report: {report_path.resolve()}")



# --------------------------------------------------------------------------- exchange formats and run diffs


def _chunk_table(cfg) -> str:

    return chunks_table_name(cfg.search.table_embedder or cfg.embed.name, cfg.chunking.key())


@eval_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="folder to write into")],
    fmt: Annotated[str, typer.Option("--format", help="trec (run + qrels per target, from --run) | beir (corpus, queries, qrels)")] = "trec",
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="eval run directory")] = None,
    queries: Annotated[Optional[Path], typer.Option("--queries", help="beir: eval set whose labels are matched against --db now (instead of --run)")] = None,
    score: Annotated[str, typer.Option("--score", help="trec: rank (1/rank, the order ranx scored) | search (the hit's score)")] = "rank",
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    embedder: EmbedderOption = None,
    chunking: ChunkingOption = None,
) -> None:
    """Export an eval run as TREC run + qrels files, or the indexed chunks, queries and qrels in BEIR's layout."""

    if fmt not in ("trec", "beir"):
        fail(f"--format: unsupported format {fmt!r} (use trec or beir)")
    if fmt == "trec":
        if run_dir is None or queries is not None:
            fail("--format trec exports an eval run: give --run RUN_DIR (and no --queries)")
        try:
            written = export_trec(run_dir, out, score=score)
        except ValueError as exc:
            fail(str(exc))
            return
        if json_output:
            emit_json({"format": "trec", "run": str(run_dir), "files": {t: {k: str(v) for k, v in p.items()} for t, p in written.items()}})
        else:
            for target, paths in written.items():
                typer.echo(f"{target:<6} run -> {paths['run']}   qrels -> {paths['qrels']}")
        return
    if (run_dir is None) == (queries is None):
        fail("--format beir: give either --run RUN_DIR or --queries FILE (with --db)")
    cfg = build_config(config, {"store.db_uri": db, "embed.name": embedder, "chunking.strategy": chunking})
    try:
        if run_dir is not None:

            db_uri = db or load_run(run_dir).manifest.get("db_uri") or cfg.store.db_uri
            cfg = build_config(config, {"store.db_uri": db_uri})
            result = beir_from_run(open_existing_store(cfg), run_dir, out)
        else:
            load_entries(queries)  # one line per bad entry
            index_store = open_existing_store(cfg)
            table = _chunk_table(cfg)
            if not index_store.has_table(table):
                fail(f"no table {table} in {cfg.store.db_uri} (index with --embedder {cfg.embed.name} --chunking {cfg.chunking.strategy})")
            result = beir_from_index(index_store, queries, out, chunk_table=table)
    except (ExportError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    if json_output:
        emit_json({"format": "beir", **result.to_dict()})
    else:
        typer.echo(f"wrote BEIR dataset {out}: {result.n_documents} chunks of {result.table}, {result.n_queries} queries, "
                   f"{result.n_qrels} qrels")
    if result.unmatched_labels:
        typer.echo(f"mmrag: warning: {result.unmatched_labels} labels match nothing (see `mmrag eval check {queries}`)", err=True)


@eval_app.command("diff")
def diff(
    run_a: Annotated[Path, typer.Argument(help="eval run directory A (e.g. the baseline run)")],
    run_b: Annotated[Path, typer.Argument(help="eval run directory B (compared with A)")],
    metric: Annotated[str, typer.Option("--metric", help="per-query metric, e.g. recall@5, ndcg@10, mrr")] = "recall@5",
    target: Annotated[str, typer.Option("--target", help="text | image")] = "text",
    hits: Annotated[int, typer.Option("--hits", min=0, help="top hits shown per run and query")] = 3,
    limit: Annotated[int, typer.Option("--limit", min=0, help="changed queries shown (0: all; --json always lists all)")] = 20,
    stat_test: Annotated[Optional[str], typer.Option("--stat-test", help="student (paired t-test) | fisher (randomization)")] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Queries whose METRIC changed from RUN_A to RUN_B, worst regressions first, with both runs' top hits and the paired test."""
    if target not in ("text", "image"):
        fail(f"--target: unknown target {target!r} (use text or image)")
    cfg = build_config(config, {"eval.stat_test": stat_test})

    try:
        result = diff_runs(run_a, run_b, metric=metric, target=target, n_hits=hits, stat_test=cfg.eval.stat_test,
                           max_p=cfg.eval.max_p, n_permutations=cfg.eval.n_permutations, random_seed=cfg.eval.random_seed)
    except (ValueError, KeyError) as exc:
        fail(str(exc).strip("'\""))
        return
    if json_output:
        emit_json(result.to_dict())
    else:
        typer.echo(format_diff(result, limit=limit))


@eval_app.command("import-beir")
def import_beir_command(
    dataset: Annotated[Path, typer.Argument(help="BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")],
    out: Annotated[Path, typer.Option("--out", help="eval set to write (JSON Lines)")],
    pages: Annotated[Optional[Path], typer.Option("--pages", help="folder for the generated HTML pages (default: <out stem>-pages beside --out)")] = None,
    split: Annotated[str, typer.Option("--split", help="qrels split: qrels/<split>.tsv")] = "test",
    kind: Annotated[str, typer.Option("--kind", help="kind given to every query (metrics are aggregated per kind)")] = "beir",
    index: Annotated[bool, typer.Option("--index/--no-index", help="index the pages into --db right away")] = True,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    embedder: EmbedderOption = None,
    chunking: ChunkingOption = None,
) -> None:
    """Turn a BEIR dataset into one HTML page per document and an eval set of its queries and qrels, and index the pages."""

    cfg = build_config(config, {"store.db_uri": db, "embed.name": embedder, "chunking.strategy": chunking,
                                "progress": False if json_output else None})
    min_chars = cfg.chunking.min_chars if cfg.chunking.strategy == "paragraph" else 1
    try:
        imported = import_beir(dataset, out, pages_dir=pages, split=split, kind=kind, min_chars=min_chars)
    except (BeirError, OSError) as exc:
        fail(str(exc))
        return
    for warning in imported.warnings:
        typer.echo(f"mmrag: warning: {warning}", err=True)
    summary = None
    if index:
        check_embedder_name(cfg)
        prepare_prefect_environment()
        from mmrag.flows.index import run_index  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

        quiet_prefect_errors()

        try:
            summary = run_index([str(imported.pages_dir)], cfg)
        except EmbedderUnavailable as exc:
            fail(str(exc))
        except (DatabaseLocked, StoreWriteError) as exc:
            fail(str(exc), code=1)
    next_step = f"mmrag eval run --queries {imported.evalset} --db {cfg.store.db_uri} --target text"
    if json_output:
        emit_json({**imported.to_dict(), "index": summary.to_dict() if summary else None, "next": next_step})
    else:
        typer.echo(f"wrote {imported.n_documents} pages to {imported.pages_dir} and {imported.n_queries} queries "
                   f"({imported.n_labels} relevant documents) to {imported.evalset}")
        if summary is not None:
            typer.echo(summary.to_text())
        else:
            typer.echo(f"index them: mmrag index {imported.pages_dir} --db {cfg.store.db_uri}")
        typer.echo(f"evaluate: {next_step}")
    raise typer.Exit(summary.exit_code(strict=cfg.strict) if summary is not None else 0)


# --------------------------------------------------------------------------- generated query sets (issue #16)


@eval_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="eval set to write (JSON Lines); provenance in FILE.meta.json")],
    n: Annotated[int, typer.Option("--n", min=1, help="questions to generate")] = 20,
    llm: Annotated[Optional[str], typer.Option("--llm", help="BACKEND:MODEL writing the questions (default eval.generate_llm, "
                                               "else llm.backend/llm.model)")] = None,
    add: Annotated[Optional[int], typer.Option("--add", min=1, help="add N questions from documents new or changed since FILE's meta")] = None,
    seed: Annotated[int, typer.Option("--seed", help="sampling seed (same seed, same index: same set)")] = 0,
    judge: Annotated[Optional[str], typer.Option("--judge", help="BACKEND:MODEL that drops questions its evidence does not answer")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    embedder: EmbedderOption = None,
    chunking: ChunkingOption = None,
) -> None:
    """Write an eval set of LLM-written questions from the index: text questions from sampled sentences, figure questions
    from images with a caption or OCR text; filtered for copying, near-duplicates and (with --judge) answerability."""
    cfg = build_config(config, {"store.db_uri": db, "embed.name": embedder, "chunking.strategy": chunking})
    index_store = open_existing_store(cfg)

    try:
        backend_name, model = parse_llm_spec(llm or cfg.eval.generate_llm, cfg.llm)
        spec = f"{backend_name}:{model}"
        writer = CachedLlm(make_backend(cfg.llm, spec), spec, cache_path(out), seed=seed, temperature=cfg.llm.temperature)
        checker = None
        if judge:
            judge_backend, judge_model = parse_llm_spec(judge, cfg.llm)
            judge = f"{judge_backend}:{judge_model}"
            checker = writer if judge == spec else CachedLlm(make_backend(cfg.llm, judge), judge, None, seed=seed,
                                                             temperature=0.0, share=writer)
        _entries, summary = generate_set(index_store, cfg, out, llm=writer, llm_spec=spec, n=n, add=add, seed=seed,
                                         embed=create_embedder(EmbedConfig(name="minilm", device=cfg.embed.device)).embed_texts,
                                         judge=checker, judge_spec=judge, log=lambda m: typer.echo(m, err=True))
    except (GenerateError, LlmError) as exc:
        fail(str(exc))
        return
    if json_output:
        emit_json({"out": str(out), "meta": str(out) + ".meta.json", **summary.to_dict()})
    else:
        for line in summary.lines():
            typer.echo(line)
        typer.echo(f"wrote {out} (+ {out.name}.meta.json); check it: mmrag eval check {out} --db {cfg.store.db_uri}")

def register_top(app: typer.Typer) -> None:
    """Mount the top-level commands of part B on the main app: ``mmrag report`` and ``mmrag main``."""
    app.command("report")(report_command)
    app.command("main")(main_command)
