"""The ``mmrag`` command line: one entry point dispatching to the flows and stores.

Every subcommand takes ``--db URI``, ``--config FILE`` (YAML or TOML) and ``--json``; flags override
the config file, which overrides ``MMRAG_*`` environment variables and the defaults.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

from mmrag.progress import QUIET_ENV, quiet_libraries

# Before lancedb and transformers are imported below: their loggers read these once, at import.
VERBOSE = "--verbose" in sys.argv[1:] or os.environ.get("MMRAG_OPS__VERBOSE", "").lower() in ("1", "true", "yes")
if not VERBOSE:
    for _key, _value in QUIET_ENV.items():
        os.environ.setdefault(_key, _value)

import typer  # noqa: E402 - after the quiet environment above

from mmrag.cli.common import (  # noqa: E402
    ConfigOption,
    DbOption,
    JsonOption,
    build_config,
    DEBUG,
    check_embedder_name,
    emit_json,
    fail,
    quiet_prefect_errors,
    open_existing_store,
    prepare_prefect_environment,
)
from mmrag.cli.run_progress import IndexProgress  # noqa: E402
from mmrag.cli.signals import stop_on_signals  # noqa: E402
from mmrag.pipelines.embed import EmbedderUnavailable, embedder_specs  # noqa: E402
from mmrag.pipelines.guard import DatabaseLocked, StoreWriteError  # noqa: E402

app = typer.Typer(
    name="mmrag",
    help="Multimodal RAG over articles: index, search, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _every_command(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="full tracebacks and Prefect's error logs (also MMRAG_DEBUG=1)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="let Prefect's per-task lines and libraries' progress bars and "
                                          "warnings through (ops.verbose)")] = False,
) -> None:
    """Every command stops within seconds on SIGINT/SIGTERM, exit 130/143 (:mod:`mmrag.cli.signals`); the terminal
    shows mmrag's progress and summary, not every library's chatter, unless --verbose."""
    if debug:
        DEBUG["on"] = True
    if verbose:
        os.environ["MMRAG_OPS__VERBOSE"] = "true"
    quiet_libraries(verbose or VERBOSE)
    ctx.with_resource(stop_on_signals())


@app.command()
def index(
    sources: Annotated[list[str], typer.Argument(help="page URLs, sitemap.xml, RSS/Atom feeds, URL list files, .html files or folders")],
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    embedder: Annotated[Optional[str], typer.Option("--embedder", help="embedder name (see `mmrag status`)")] = None,
    model_path: Annotated[Optional[str], typer.Option("--model-path", help="local checkpoint directory for the embedder")] = None,
    chunking: Annotated[Optional[str], typer.Option("--chunking", help="paragraph | window | tokens")] = None,
    window_chars: Annotated[Optional[int], typer.Option(help="window chunking: characters per window")] = None,
    window_overlap: Annotated[Optional[float], typer.Option(help="window chunking: overlap fraction")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="tokens chunking: token budget per chunk")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="embedding batch size")] = None,
    page_batch: Annotated[Optional[int], typer.Option(help="pages committed together")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="requests in flight over all hosts")] = None,
    per_host_concurrency: Annotated[Optional[int], typer.Option(help="requests in flight per host")] = None,
    per_host_delay: Annotated[Optional[float], typer.Option(help="seconds between request starts to one host")] = None,
    robots: Annotated[Optional[bool], typer.Option("--robots/--no-robots", help="honour robots.txt")] = None,
    images: Annotated[Optional[bool], typer.Option("--images/--no-images", help="download and verify images")] = None,
    ocr: Annotated[Optional[bool], typer.Option("--ocr/--no-ocr", help="read the text printed in images into their text surrogate (images.ocr)")] = None,
    caption_missing: Annotated[Optional[str], typer.Option(
        "--caption-missing", metavar="LLM",
        help="caption images that have no caption with this vision model, BACKEND:MODEL (ollama:llama3.2-vision, "
        "openai:NAME); generated captions are stored with their model and prompt and added to the text surrogate")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict", help="exit 1 when any item failed")] = None,
    reparse: Annotated[Optional[bool], typer.Option("--reparse", help="parse again from stored raw responses, fetching only what was never stored")] = None,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="progress bars (default: on a terminal)")] = None,
) -> None:
    """Fetch, parse, chunk, embed and store SOURCES; prints a summary (exit 1 when nothing could be indexed)."""
    cfg = build_config(
        config,
        {
            "store.db_uri": db,
            "embed.name": embedder,
            "embed.model_path": model_path,
            "embed.batch_size": batch_size,
            "chunking.strategy": chunking,
            "chunking.window_chars": window_chars,
            "chunking.window_overlap": window_overlap,
            "chunking.max_tokens": max_tokens,
            "page_batch": page_batch,
            "fetch.concurrency": concurrency,
            "fetch.per_host_concurrency": per_host_concurrency,
            "fetch.per_host_delay_s": per_host_delay,
            "fetch.respect_robots": robots,
            "fetch.reparse_from_raw": reparse,
            "images.fetch": images,
            "images.ocr": ocr,
            "images.caption_missing": True if caption_missing else None,
            "images.caption_llm": caption_missing,
            "strict": strict,
            "progress": False if json_output else progress,
        },
    )
    check_embedder_name(cfg)
    prepare_prefect_environment()
    from mmrag.flows.index import run_index  # deferred: Prefect takes seconds to import; only commands that run a flow pay it

    quiet_prefect_errors()

    progress_so_far = IndexProgress(cfg, list(sources), json_output=json_output)
    try:
        with progress_so_far, stop_on_signals(progress_so_far.report):
            summary = run_index(sources, cfg)
    except EmbedderUnavailable as exc:
        fail(str(exc))
    except (DatabaseLocked, StoreWriteError) as exc:
        fail(str(exc), code=1)
    if json_output:
        emit_json(summary.to_dict())
    else:
        typer.echo(summary.to_text())
    raise typer.Exit(summary.exit_code(strict=cfg.strict))


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    fmt: Annotated[str, typer.Option("--format", help="export format (parquet)")] = "parquet",
    table: Annotated[Optional[list[str]], typer.Option("--table", help="table to export (repeatable; default all)")] = None,
    version: Annotated[Optional[str], typer.Option("--version", help="table version number or tag (e.g. index-<run id>)")] = None,
) -> None:
    """Write tables to Parquet files readable by pandas/pyarrow."""
    if fmt != "parquet":
        fail(f"--format: unsupported export format {fmt!r} (supported: parquet)")
    cfg = build_config(config, {"store.db_uri": db})
    index_store = open_existing_store(cfg)
    try:
        written = index_store.export_parquet(out, table, version)
    except ValueError as exc:
        fail(str(exc))
    if json_output:
        emit_json({name: str(path) for name, path in written.items()})
    else:
        for name, path in written.items():
            typer.echo(f"{name:<40} -> {path}")


@app.command()
def status(
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """What the index holds: per table rows, versions, embedders; and the last run."""
    cfg = build_config(config, {"store.db_uri": db})
    index_store = open_existing_store(cfg)
    tables = index_store.table_stats()
    last = index_store.last_run()
    registered = [{"name": s.name, "modalities": sorted(s.modalities), "description": s.description} for s in embedder_specs()]
    if json_output:
        emit_json({"db_uri": cfg.store.db_uri, "tables": tables, "last_run": last, "embedders": registered})
        return
    typer.echo(f"database {cfg.store.db_uri}")
    typer.echo(f"  {'table':<40}{'rows':>8}{'version':>9}{'versions':>10}  embedders")
    for t in tables:
        typer.echo(f"  {t['table']:<40}{t['rows']:>8}{t['version']:>9}{t['versions']:>10}  {', '.join(t['embedders']) or '-'}")
    if last:
        s = last["summary"]
        typer.echo(
            f"last run {last['run_id']} ({last['kind']}) finished {last['finished_at']:%Y-%m-%d %H:%M:%S} UTC: "
            f"{s.get('pages_ok', 0)} pages ok, {s.get('pages_failed', 0)} failed, {s.get('chunks_total', 0)} chunks, "
            f"{s.get('images_total', 0)} images"
        )
    else:
        typer.echo("no runs recorded yet")


# --- sub-command modules are mounted here, one line each (keep imports light: heavy ones go inside commands) ---
from mmrag.cli import llm; app.command("ask")(llm.ask); app.add_typer(llm.llm_app, name="llm")  # noqa: E402,E702 - `mmrag ask`, `mmrag llm …`
from mmrag.cli.search import register as _register_search; _register_search(app)  # noqa: E402,E702
from mmrag.cli.eval import eval_app; app.add_typer(eval_app, name="eval")  # noqa: E402,E702
from mmrag.cli.eval import register_top as _register_eval_top; _register_eval_top(app)  # noqa: E402,E702 - `mmrag report`, `mmrag main`
from mmrag.cli.ops import register as _register_ops; _register_ops(app)  # noqa: E402,E702
from mmrag.cli.models import classify, models_app; app.add_typer(models_app, name="models"); app.command("classify")(classify)  # noqa: E402,E702


def main() -> None:  # pragma: no cover - console script shim
    """Console entry point."""
    app()
