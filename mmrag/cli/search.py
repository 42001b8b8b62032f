"""``mmrag search`` and ``mmrag import-vectors``: mounted on the main app by :func:`register`.

``search QUERY`` (or ``--image PATH``) prints hits as a compact table, or JSON with ``--json``.
``search --stdin`` is the warm path: one process, the embedder and tables loaded once, one query
per input line (plain text, or a JSON object such as ``{"query": "...", "target": "images", "k": 3}``
or ``{"image": "cat.png"}``), one answer per query (a JSON line with ``--json``); a bad line gets an
error answer and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmrag.cli.common import ConfigOption, DbOption, JsonOption, build_config, emit_json, fail
from mmrag.pipelines import store
from mmrag.pipelines.generate import caption_or_generated
from mmrag.pipelines.import_vectors import VectorImportError, import_vectors
from mmrag.pipelines.retrieve import Filters, SearchError, Searcher, check_user_where
from mmrag.pipelines.terminal import clip, terminal_safe

ImageScoringOption = Annotated[Optional[str], typer.Option(
    "--image-scoring", help="images: mean (one vector per image, the original design) | max_query (best of BLIP-2's "
    "query embeddings in vector_multi; blip2 tables only)")]

LINE_KEYS = {
    "query", "image", "target", "mode", "k", "threshold", "temperature", "reranker", "candidates",
    "where", "url_prefix", "title", "section", "image_status", "fetched_since", "fetched_until",
    "published_since", "published_until",
}


def register(app: typer.Typer) -> None:
    """Add ``search`` and ``import-vectors`` to ``app``."""
    app.command(name="search")(search)
    app.command(name="import-vectors")(import_vectors_command)


def search(
    query: Annotated[Optional[str], typer.Argument(help="query text (omit with --image or --stdin)")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="query image file (needs an image embedder: clip, blip2)")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="text | images | both")] = None,
    k: Annotated[Optional[int], typer.Option("--k", min=1, help="hits per target (default: 15 text, 5 images)")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="minimum score (softmax score, or cosine in cosine mode)")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="softmax (the original design) | cosine")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="softmax temperature (default: 0.25 text, 0.5 images)")] = None,
    pool: Annotated[Optional[int], typer.Option("--pool", min=1, help="softmax over at most this many candidates (exact when the table is smaller)")] = None,
    image_scoring: ImageScoringOption = None,
    reranker: Annotated[Optional[str], typer.Option("--reranker", help="none | hybrid | llm | cross-encoder | model-score")] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", min=1, help="hits a reranker sees (N)")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="SQL filter over the table's columns (LanceDB where)")] = None,
    url_prefix: Annotated[Optional[str], typer.Option("--url-prefix", help="only documents whose URL starts with this")] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="only this article title")] = None,
    section: Annotated[Optional[str], typer.Option("--section", help="only this section and its subsections")] = None,
    image_status: Annotated[Optional[str], typer.Option("--image-status", help="only images with this status (ok, not_fetched, …)")] = None,
    fetched_since: Annotated[Optional[str], typer.Option("--fetched-since", help="only documents fetched on/after (YYYY-MM-DD)")] = None,
    fetched_until: Annotated[Optional[str], typer.Option("--fetched-until", help="only documents fetched on/before (YYYY-MM-DD)")] = None,
    published_since: Annotated[Optional[str], typer.Option("--published-since", help="only pages published on/after (YYYY-MM-DD; pages without a date are left out)")] = None,
    published_until: Annotated[Optional[str], typer.Option("--published-until", help="only pages published on/before (YYYY-MM-DD; pages without a date are left out)")] = None,
    embedder: Annotated[Optional[str], typer.Option("--embedder", help="query embedder (must match the indexed vectors)")] = None,
    model_path: Annotated[Optional[str], typer.Option("--model-path", help="local checkpoint directory for the embedder")] = None,
    chunking: Annotated[Optional[str], typer.Option("--chunking", help="chunk table's chunking: paragraph | window | tokens")] = None,
    table_embedder: Annotated[Optional[str], typer.Option("--table-embedder", help="search tables of this embedder label (e.g. imported vectors)")] = None,
    cross_encoder: Annotated[Optional[str], typer.Option("--cross-encoder", help="cross-encoder reranker model (directory or cached hub id)")] = None,
    llm: Annotated[Optional[str], typer.Option("--llm", help="llm reranker's model: BACKEND:MODEL (default: the embedded llamacpp model)")] = None,
    llm_url: Annotated[Optional[str], typer.Option("--llm-url", help="llm reranker: override with an OpenAI-compatible base URL (…/v1)")] = None,
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="llm reranker: model name at --llm-url")] = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="read one query per line from stdin, keeping the models loaded")] = False,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Search text chunks and/or images; prints hits (rank, score, cosine, title > section, text or caption)."""
    settings = {
        "store.db_uri": db,
        "embed.name": embedder,
        "embed.model_path": model_path,
        "chunking.strategy": chunking,
        "search.target": target,
        "search.mode": mode,
        "search.softmax_pool": pool,
        "search.image_scoring": image_scoring,
        "search.reranker": reranker,
        "search.rerank_candidates": candidates,
        "search.table_embedder": table_embedder,
        "search.cross_encoder_model": cross_encoder,
        "search.rerank_llm": llm,
        "search.llm_base_url": llm_url,
        "search.llm_model": llm_model,
    }
    cfg = build_config(config, settings)
    option_fields: dict[str, Any] = {}
    if k is not None:
        option_fields |= {"search.text_k": k, "search.image_k": k}
    if temperature is not None:
        option_fields |= {"search.text_temperature": temperature, "search.image_temperature": temperature}
    if threshold is not None:  # the bounds of the threshold this mode applies
        option_fields |= ({"search.cosine_threshold": threshold} if cfg.search.mode in ("cosine", "hybrid")
                          else {"search.text_threshold": threshold, "search.image_threshold": threshold})
    if option_fields:  # validated by the config model, like every configured value (the search takes them as overrides)
        build_config(config, {**settings, **option_fields})
    if where is not None:  # refused before anything is opened: one expression, no statement or comment
        try:
            check_user_where(where)
        except SearchError as exc:
            fail(f"--where: {exc}")
    filters = Filters(url_prefix=url_prefix, title=title, section=section, image_status=image_status,
                      fetched_since=fetched_since, fetched_until=fetched_until, published_since=published_since,
                      published_until=published_until, where=where)
    overrides = {"k": k, "threshold": threshold, "temperature": temperature}
    searcher = Searcher(cfg)
    if stdin:
        if query is not None or image is not None:
            fail("--stdin reads the queries from stdin; give no QUERY or --image")
        _serve_stdin(searcher, filters, overrides, json_output)
        return
    if (query is None) == (image is None):
        fail("give a QUERY or --image PATH (one of them)")
    try:
        result = searcher.search(query, image=image, filters=filters, **overrides)
    except SearchError as exc:
        fail(str(exc))
        return
    if json_output:
        emit_json(result.to_dict())
    else:
        typer.echo(format_result(result))


def _serve_stdin(searcher: Any, filters: Any, overrides: dict[str, Any], json_output: bool) -> None:
    """Answer one query per stdin line until EOF."""
    filter_keys = {f.name for f in dataclasses.fields(Filters)}
    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            line, bad = "", f"not UTF-8 text (byte offset {exc.start} of the line: {raw[exc.start:exc.start + 1]!r})"
        else:
            bad = None
        if not line and bad is None:
            continue
        try:
            if bad is not None:
                raise ValueError(bad)
            args = parse_query_line(line)
            line_filters = dataclasses.replace(filters, **{key: args.pop(key) for key in list(args) if key in filter_keys})
            if "candidates" in args:
                args["rerank_candidates"] = args.pop("candidates")
            query = args.pop("query", None)
            result = searcher.search(query, filters=line_filters, **{**overrides, **args})
        except (SearchError, ValueError) as exc:
            if json_output:
                sys.stdout.write(json.dumps({"line": number, "error": str(exc)}) + "\n")
            else:
                typer.echo(f"mmrag: error: line {number}: {terminal_safe(str(exc), keep_newlines=False)}", err=True)
            sys.stdout.flush()
            continue
        if json_output:
            sys.stdout.write(json.dumps(result.to_dict(), default=str) + "\n")
        else:
            sys.stdout.write(format_result(result) + "\n\n")
        sys.stdout.flush()


def parse_query_line(line: str) -> dict[str, Any]:
    """A stdin line as search arguments: plain text is the query; a JSON object may set any of :data:`LINE_KEYS`."""
    if not line.startswith("{"):
        return {"query": line}
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a JSON query line must be an object")
    unknown = sorted(set(data) - LINE_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(LINE_KEYS))}")
    return {key: value for key, value in data.items() if value is not None}


def format_result(result: Any, *, width: int = 72) -> str:
    """Compact human-readable tables of a :class:`~mmrag.pipelines.retrieve.SearchResult`, one per target.

    Stored text is printed neutralised (:func:`mmrag.pipelines.terminal.terminal_safe`: no escape sequence
    or control character reaches the terminal) and clipped after that, so a cut never splits a sequence.
    """
    lines: list[str] = []
    what = f"image {terminal_safe(str(result.image))}" if result.image else terminal_safe(repr(result.query))
    for target, table in result.tables.items():
        hits = result.hits_for(target)
        exact = result.softmax_exact.get(target)
        basis = "" if exact is None else (", exact softmax" if exact else ", softmax over a pool")
        lines.append(
            f"{target} hits for {what}: {len(hits)} ({result.mode}, reranker {result.reranker}, "
            f"{result.candidates.get(target, 0)} candidates{basis}, table {table})"
        )
        if not hits:
            lines.append("  (no hit passed the threshold)")
            continue
        lines.append(f"  {'#':>3} {'score':>8} {'cos':>6}  {'article > section':<34}  {'text' if target == 'text' else 'caption [status] src'}")
        for hit in hits:
            where = clip(" > ".join(p for p in (hit.article_title, hit.section) if p), 34)
            caption = caption_or_generated(hit) or "(no caption)"
            body = hit.text if hit.target == "text" else f"{caption} [{hit.image_status}] {hit.src_url}"
            lines.append(f"  {hit.rank:>3} {hit.score:>8.4f} {hit.similarity:>6.3f}  {where:<34}  {clip(body, width)}")
    return "\n".join(lines)


def import_vectors_command(
    vectors: Annotated[Path, typer.Argument(help="vectors file: .pt tensor or .npy array, shape (rows, dimension)")],
    content: Annotated[Path, typer.Argument(help="JSON list or JSON Lines, one record per vector, same order")],
    embedder_label: Annotated[str, typer.Option("--embedder-label", help="name of the vectors' embedder, e.g. clip-vit-b16-precomputed")],
    target: Annotated[str, typer.Option("--target", help="text (chunk rows) | images (image rows)")] = "text",
    chunking_key: Annotated[str, typer.Option("--chunking-key", help="chunk table suffix (chunks__<label>__<key>)")] = "paragraph",
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="where image paths are resolved (default: the content file's folder)")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Import precomputed vectors with their content as chunk or image rows (search them with --table-embedder LABEL)."""
    cfg = build_config(config, {"store.db_uri": db})
    if target not in ("text", "images"):
        fail(f"--target: use text or images, got {target!r}")

    try:
        summary = import_vectors(
            store.IndexStore(cfg.store.db_uri), vectors, content, embedder=embedder_label, target=target,  # type: ignore[arg-type]
            chunking_key=chunking_key, images_root=images_root, image_cfg=cfg.images,
            max_image_bytes=cfg.fetch.max_image_bytes,
        )
    except VectorImportError as exc:
        fail(str(exc))
        return
    if json_output:
        emit_json(summary.to_dict())
    else:
        typer.echo(
            f"imported {summary.rows} {target} rows ({summary.dimension}-d, {summary.documents} documents, "
            f"{summary.deleted} stale rows deleted) into {summary.table}"
            + (f"; {summary.images_found} image files found" if target == "images" else "")
        )
