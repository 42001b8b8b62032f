"""``mmrag ask`` and ``mmrag llm pull|list|template``: answering questions and managing LLM backends.

Mounted by :mod:`mmrag.cli` with ``app.command("ask")(ask)`` and ``app.add_typer(llm_app, name="llm")``.
``ask`` streams the answer, then lists its sources; when the model fails (server unreachable, model
missing, images rejected, context overflow) it still prints the sources, then one error line, and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmrag.cli.common import ConfigOption, DbOption, JsonOption, build_config, emit_json, fail, open_existing_store
from mmrag.pipelines.embed import embedders_with
from mmrag.pipelines.generate import (DEFAULT_PROMPT_TEMPLATE, Answer, PromptTemplateError, answer_events, load_image_blobs,
                                      load_prompt_template, read_query_image, sources_of)
from mmrag.pipelines.llm import make_backend, parse_llm_spec
from mmrag.pipelines.llm.base import LlmError, Usage
from mmrag.pipelines.llm.gguf import DEFAULT_GGUF_MODEL, GGUF_MODELS, locate_parts, resolve_gguf
from mmrag.pipelines.llm.ollama_backend import list_ollama_models, ollama_host, pull_ollama_model
from mmrag.pipelines.images import load_rgb
from mmrag.pipelines.retrieve import SearchError, Searcher
from mmrag.pipelines.terminal import StreamSafe, clip, terminal_safe

llm_app = typer.Typer(
    help="LLM backends: models on an Ollama server, the embedded GGUF models, the prompt template.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LlmOption = Annotated[Optional[str], typer.Option(
    "--llm", help="BACKEND:MODEL, e.g. llamacpp:qwen2.5-coder-0.5b, ollama:llama3.2-vision, openai:gpt-4o-mini")]


def retrieve_for_question(cfg: Any, question: str, image: Path | None) -> list[Any]:
    """Retrieval hits for ``question``: the one place ``ask`` touches retrieval (``mmrag.pipelines.retrieve.Searcher``).

    The question text is searched with the config's search settings; with ``--image`` and an embedder
    that embeds images (clip, blip2), hits of the image query are appended (duplicates dropped).
    Raises ``ValueError`` (``SearchError``) with a one-line message when search cannot run.
    """

    searcher = Searcher(cfg)
    hits = list(searcher.search(question).hits)
    if image is not None:
        try:
            seen = {h.id for h in hits}
            hits += [h for h in searcher.search(image=image).hits if h.id not in seen]
        except SearchError:
            pass  # a text-only embedder cannot search by image; the image still goes to the model
    return hits


def _format_source(source: Any) -> str:
    title, section = source.article_title or "", source.section or ""
    # Section paths usually start with the article's own heading: show the title once.
    where = section if title and section.startswith(title) else " › ".join(p for p in (title, section) if p)
    line = f"  [{source.rank}] {source.score:6.3f}  {source.target:<5}  {clip(where, 80) or '-'}  {clip(source.doc_url, 200)}"
    if source.image_path:
        line += f"\n        image: {clip(source.image_path, 200)}"
    return line


def _format_usage(answer: Any) -> str:
    usage = answer.usage
    parts = [f"{answer.backend}:{answer.model}"]
    if usage.prompt_tokens is not None or usage.completion_tokens is not None:
        parts.append(f"{usage.prompt_tokens or 0} prompt + {usage.completion_tokens or 0} answer tokens")
    if usage.total_s is not None:
        timing = f"{usage.total_s:.1f} s"
        if usage.time_to_first_token_s is not None:
            timing += f", first token {usage.time_to_first_token_s:.1f} s"
        if usage.load_s:
            timing += f", model load {usage.load_s:.1f} s"
        parts.append(timing)
    if usage.calls > 1:
        parts.append(f"{usage.calls} model calls")
    return "(" + " · ".join(parts) + ")"


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    image: Annotated[Optional[Path], typer.Option("--image", help="an image to ask about (searched with, and shown to vision models)")] = None,
    llm: LlmOption = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="answer length budget in tokens")] = None,
    prompt_template: Annotated[Optional[Path], typer.Option("--prompt-template", help="Jinja2 prompt template file")] = None,
) -> None:
    """Answer QUESTION from the index: streams the answer, then lists its sources (url, section, image, score)."""
    cfg = build_config(config, {"store.db_uri": db, "llm.max_tokens": max_tokens,
                                    "llm.prompt_template": str(prompt_template) if prompt_template else None})

    if image is not None and not image.is_file():
        fail(f"--image: no file at {image}")
    if image is not None:
        try:
            load_rgb(image.read_bytes(), cfg.images, max_bytes=cfg.fetch.max_image_bytes)
        except (ValueError, OSError) as exc:
            fail(f"--image: {image} is not an image that can be read ({exc})")
    try:
        load_prompt_template(cfg.llm.prompt_template)
        backend_name, model = parse_llm_spec(llm, cfg.llm)
    except (PromptTemplateError, LlmError) as exc:
        fail(str(exc))
    index_store = open_existing_store(cfg)
    try:
        hits = retrieve_for_question(cfg, question, image)
    except ValueError as exc:
        fail(str(exc))
    answer = Answer(question=question, answer="", sources=sources_of(hits), backend=backend_name, model=model)
    pieces: list[str] = []
    streamed = False
    screen = StreamSafe()  # the model may echo escape sequences from page text: never pass them to the terminal
    try:
        backend = make_backend(cfg.llm, llm)
        query_image = read_query_image(image, ocr=cfg.llm.ocr_query_image and not backend.supports_images) if image else None
        if query_image is not None and not backend.supports_images and not query_image.ocr_text \
                and cfg.embed.name not in embedders_with("image"):
            fail(f"--image cannot be used: {backend_name}:{model} reads text only, embedder {cfg.embed.name} does not embed "
                 "images, and no text was read from it (llm.ocr_query_image); use a vision model or --embedder clip")
        blobs = load_image_blobs(index_store, [getattr(h, "image_sha256", None) or "" for h in hits]) if cfg.llm.send_images else {}
        answer.prompt, events = answer_events(question, hits, backend, cfg.llm, query_image=query_image, blobs=blobs)
        for event in events:
            if isinstance(event, Usage):
                answer.usage = event
                continue
            pieces.append(event)
            if not json_output:
                streamed = True
                sys.stdout.write(screen.feed(event))
                sys.stdout.flush()
    except LlmError as exc:
        answer.error = {"kind": exc.kind, "message": exc.message}
    answer.answer = "".join(pieces)
    if json_output:
        emit_json(answer.to_dict())
    else:
        if streamed:
            typer.echo(screen.flush())
        typer.echo("\nSources:" if answer.sources else "\nSources: none (the index returned no hits)")
        for source in answer.sources:
            typer.echo(_format_source(source))
        if answer.error is None:
            typer.echo(_format_usage(answer))
    if answer.error is not None:
        if json_output:
            raise typer.Exit(1)
        fail(answer.error["message"], code=1)


@llm_app.command("pull")
def pull(
    model: Annotated[str, typer.Argument(help="ollama:NAME (or NAME) to pull on the Ollama server; llamacpp:NAME assembles a GGUF")],
    host: Annotated[Optional[str], typer.Option("--host", help="Ollama server; default llm.ollama_host / OLLAMA_HOST")] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Ask the Ollama server to pull a model (progress on stderr), or assemble a local GGUF model (llamacpp:NAME)."""
    cfg = build_config(config, {"llm.ollama_host": host})

    backend, _, name = model.partition(":") if model.split(":", 1)[0] in ("ollama", "llamacpp", "openai") else ("ollama", "", model)
    try:
        if backend == "llamacpp":
            path = _prepare_gguf(name, cfg.llm.cache_dir)
            result = {"model": f"llamacpp:{name}", "status": "success", "path": str(path)}
        elif backend == "ollama":

            last: list[str] = []

            def progress(status: str, completed: int | None, total: int | None) -> None:
                if json_output:
                    return
                line = status + (f" {completed * 100 // total}%" if completed and total else "")
                if not last or last[-1] != line:
                    last.append(line)
                    typer.echo(f"  {line}", err=True)

            status = pull_ollama_model(name, cfg.llm.ollama_host, on_progress=progress)
            result = {"model": f"ollama:{name}", "status": status, "host": ollama_host(cfg.llm.ollama_host)}
        else:
            fail(f"{model}: `llm pull` works for ollama:NAME and llamacpp:NAME (an OpenAI-compatible server manages its own models)")
            return
    except LlmError as exc:
        fail(str(exc), code=1)
    if json_output:
        emit_json(result)
    else:
        typer.echo(f"{result['model']}: {result['status']}" + (f" ({result['path']})" if "path" in result else ""))


def _prepare_gguf(name: str, cache_dir: str) -> Path:

    return resolve_gguf(name or DEFAULT_GGUF_MODEL, cache_dir)


@llm_app.command("list")
def list_models(
    host: Annotated[Optional[str], typer.Option("--host", help="Ollama server; default llm.ollama_host / OLLAMA_HOST")] = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """The embedded GGUF models (installed? assembled?) and the models on the Ollama server (if one answers)."""
    cfg = build_config(config, {"llm.ollama_host": host})

    local = []
    for spec in GGUF_MODELS.values():
        try:
            locate_parts(spec)
            installed = True
        except LlmError:
            installed = False
        assembled = (Path(cfg.llm.cache_dir).expanduser() / spec.file_name).is_file()
        local.append({"name": f"llamacpp:{spec.name}", "description": spec.description, "parts_installed": installed,
                      "assembled": assembled, "size": spec.size})
    server: dict[str, Any] = {"host": ollama_host(cfg.llm.ollama_host)}
    try:
        server["models"] = list_ollama_models(cfg.llm.ollama_host)
    except LlmError as exc:
        server["error"] = {"kind": exc.kind, "message": exc.message}
    if json_output:
        emit_json({"llamacpp": local, "ollama": server})
        return
    typer.echo("embedded (llamacpp):")
    for row in local:
        state = "assembled" if row["assembled"] else "parts installed" if row["parts_installed"] else "parts not installed"
        typer.echo(f"  {row['name']:<32} {state:<20} {row['description']}")
    typer.echo(f"ollama at {server['host']}:")
    if "error" in server:
        typer.echo(f"  unavailable: {server['error']['message']}")
    elif not server["models"]:
        typer.echo("  no models (pull one with `mmrag llm pull ollama:NAME`)")
    for row in server.get("models", []):
        size = f"{row['size'] / 1e9:.1f} GB" if row.get("size") else ""
        typer.echo(f"  ollama:{row['name']:<30} {size:>8}  {row.get('parameter_size') or ''}")


@llm_app.command("template")
def template() -> None:
    """Print the built-in prompt template (copy it, edit it, point llm.prompt_template or --prompt-template at it)."""

    sys.stdout.write(DEFAULT_PROMPT_TEMPLATE)
