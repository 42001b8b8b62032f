"""Query latency: the warm search path against loading the model per query, and flat vs indexed search at scale.

Part 1 (warm vs cold, same machine, same run): a table of real MiniLM vectors of real text (the sample
corpus and, when ``../shared/corpora/colah`` is present, the colah posts, chunked like ``mmrag index``
does). *Warm*: one :class:`~mmrag.pipelines.retrieve.Searcher` keeps MiniLM and the table loaded;
each query is embed + search (cosine mode, k=10, no reranker). *Cold*: the original design's
approach, the model loaded for every query (in process; a new process per query would cost more).
Prints p50/p95 of both and the ratio cold/warm.

Part 2 (scale): the corpus vectors replicated to ``--rows`` rows with small Gaussian noise and
renormalised; queries are MiniLM vectors of real question texts. For each size: flat search
(exact, no index) p50/p95, then IVF_SQ, IVF_PQ and/or IVF_HNSW_SQ indexes (cosine; the configs
``mmrag maintain`` builds, each IVF index built ``--draws`` times for that many k-means draws) and a
grid of nprobes / refine_factor / ef, each with p50/p95 and recall@10 against exact search
(``bypass_vector_index()``). Latencies are of ``Searcher.search_vector`` (what ``mmrag search``
runs after embedding: the LanceDB query, exact cosine of the returned rows, hits) and of the bare
LanceDB query.

    .venv/bin/python -m bench.query_latency --rows 100000 1000000 --write-results
    .venv/bin/python -m bench.query_latency --quick          # 20k rows, small grid, a minute

``--write-results`` replaces the ``## query_latency`` section of ``bench/RESULTS.md`` (other
sections are left alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parents[1]

from bench.machine import load_average
from bench.results import RESULTS, replace_section
from mmrag.config import ChunkingConfig, EmbedConfig, MmragConfig, SearchConfig
from mmrag.pipelines.maintenance import index_config, vector_index_name
from mmrag.pipelines.retrieve import Searcher
from mmrag.pipelines.retrieve.scoring import auto_refine_factor
from mmrag.pipelines.store import IndexStore, chunks_table_name

SAMPLE_DIR = REPO_ROOT / "data" / "sample"
COLAH_DIR = REPO_ROOT.parent / "shared" / "corpora" / "colah"
SECTION = "## query_latency"
TABLE = chunks_table_name("minilm", "paragraph")

QUESTIONS = [
    "how does reciprocal rank fusion combine rankings",
    "what does a cross-encoder reranker do",
    "difference between IVF-PQ and HNSW indexes",
    "how many neighbours per node in HNSW",
    "why split documents into chunks for retrieval",
    "overlapping windows versus paragraph chunking",
    "what is recall at k",
    "how is nDCG computed",
    "how does CLIP learn a joint image and text space",
    "what is the InfoNCE contrastive loss",
    "how does softmax temperature change the scores",
    "choosing a similarity threshold for retrieval",
    "captioning images for text search",
    "OCR on figures and diagrams",
    "how do LSTMs remember information over long sequences",
    "what are the gates of an LSTM cell",
    "how does backpropagation compute derivatives",
    "what is a convolutional neural network",
    "visualizing MNIST with dimensionality reduction",
    "what is a variational autoencoder",
    "word embeddings and representations in NLP",
    "groups and convolution in mathematics",
    "research distillation and clear explanations",
    "neural network types as functional programming",
    "visual information theory and entropy",
]


# --------------------------------------------------------------------------- measurements


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    """(p50, p95) of latencies in milliseconds."""
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered), p95


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(milliseconds, result) of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - started) * 1000, result


def machine_info() -> dict[str, str]:
    """CPU model, cores, memory, load and library versions."""
    import importlib.metadata as md

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    versions = {}
    for package in ("lancedb", "pylance", "numpy", "torch", "sentence-transformers", "pyarrow"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "-"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        **versions,
    }


# --------------------------------------------------------------------------- corpus


def corpus_files(include_colah: bool) -> list[Path]:
    """HTML articles: the sample corpus, and the colah posts when present."""
    files = sorted(p for p in SAMPLE_DIR.glob("*.html") if p.name != "index.html")
    if include_colah and COLAH_DIR.is_dir():
        files += sorted(COLAH_DIR.glob("posts/*/index.html"))
    return files


def corpus_chunks(embedder, files: list[Path]) -> list[dict]:
    """Paragraph chunks of ``files`` (parsed and chunked like ``mmrag index``), as content records."""
    from mmrag.pipelines.chunk import chunk_document
    from mmrag.pipelines.parse import parse_html

    records = []
    for path in files:
        doc = parse_html(path.read_bytes(), path.resolve().as_uri(), "text/html")
        for chunk in chunk_document(doc, ChunkingConfig(), count_tokens=embedder.count_tokens,
                                    max_tokens=embedder.max_input_tokens):
            records.append({"doc_url": chunk.doc_url, "article_title": chunk.article_title,
                            "section": chunk.section, "text": chunk.text})
    return records


def build_corpus_db(workdir: Path, embedder, include_colah: bool) -> tuple[Path, list[dict], np.ndarray]:
    """A database with the corpus chunks in ``chunks__minilm__paragraph``; returns (db, records, vectors)."""
    from mmrag.pipelines.import_vectors import import_vectors

    records = corpus_chunks(embedder, corpus_files(include_colah))
    vectors = embedder.embed_texts([r["text"] for r in records])
    np.save(workdir / "corpus.npy", vectors)
    (workdir / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    db = workdir / "corpus-db"
    import_vectors(IndexStore(str(db)), workdir / "corpus.npy", workdir / "corpus.jsonl", embedder="minilm", target="text")
    return db, records, vectors


# --------------------------------------------------------------------------- part 1: warm vs cold


def warm_vs_cold(db: Path, queries: list[str], cold_queries: int) -> dict:
    """p50/p95 of warm searches (one Searcher) and of cold ones (model loaded per query), in ms."""
    from mmrag.pipelines.embed import create_embedder

    cfg = MmragConfig(store={"db_uri": str(db)}, search={"mode": "cosine", "text_k": 10})
    warm = Searcher(cfg)
    warm.search(queries[0])  # loads the model and opens the table
    warm_ms, embed_ms, search_ms = [], [], []
    for _ in range(2):
        for query in queries:
            elapsed, result = timed(warm.search, query)
            warm_ms.append(elapsed)
            embed_ms.append(result.timings_ms["embed"])
            search_ms.append(result.timings_ms["search"])
    softmax = Searcher(cfg.model_copy(update={"search": cfg.search.model_copy(update={"mode": "softmax", "text_k": 15})}),
                       embedder=warm.embedder)
    softmax.search(queries[0])
    softmax_ms = [timed(softmax.search, q)[0] for q in queries]

    cold_ms = []
    for query in queries[:cold_queries]:
        def design_query(text: str):
            embedder = create_embedder(EmbedConfig(name="minilm"))  # the design reloaded its model per query
            return Searcher(cfg, embedder=embedder).search(text)

        cold_ms.append(timed(design_query, query)[0])
    process = cold_process_ms(db, queries, 3)
    warm_p50, warm_p95 = percentiles(warm_ms)
    cold_p50, cold_p95 = percentiles(cold_ms)
    return {
        "warm": (warm_p50, warm_p95), "warm_embed": percentiles(embed_ms), "warm_search": percentiles(search_ms),
        "warm_softmax": percentiles(softmax_ms), "cold": (cold_p50, cold_p95), "ratio": cold_p50 / warm_p50,
        "n_warm": len(warm_ms), "n_cold": len(cold_ms), "process": process,
    }


# --------------------------------------------------------------------------- part 2: scale


def replicated_batches(base: np.ndarray, rows: int, *, noise: float, batch: int, seed: int = 0):
    """Batches of ``base`` rows (cycled) plus N(0, noise²) per component, renormalised; yields (start, vectors)."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        source = np.arange(start, start + n) % len(base)
        vectors = base[source] + rng.normal(0.0, noise, size=(n, base.shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield start, source, vectors.astype(np.float32)


def build_scaled_table(db: Path, records: list[dict], base: np.ndarray, rows: int, *, noise: float):
    """``rows`` rows of replicated corpus vectors (with their texts) in ``chunks__minilm__paragraph``."""
    import lancedb

    connection = lancedb.connect(str(db))
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("doc_url", pa.string()), pa.field("article_title", pa.string()),
        pa.field("section", pa.string()), pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), base.shape[1])),
    ])
    table = connection.create_table(TABLE, schema=schema, mode="overwrite")
    columns = {key: np.array([r[key] for r in records], dtype=object) for key in ("doc_url", "article_title", "section", "text")}
    for start, source, vectors in replicated_batches(base, rows, noise=noise, batch=100_000):
        table.add(pa.table({
            "id": [f"r{i}" for i in range(start, start + len(source))],
            **{key: pa.array(values[source], pa.string()) for key, values in columns.items()},
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), base.shape[1]),
        }, schema=schema))
    return table


def exact_top_ids(table, queries: np.ndarray, k: int) -> list[list[str]]:
    """Ground truth: top-k ids by exhaustive cosine search (the index bypassed)."""
    return [
        table.search(q).distance_type("cosine").bypass_vector_index().select(["id", "_distance"]).limit(k)
        .to_arrow().column("id").to_pylist()
        for q in queries
    ]


@dataclass
class Setting:
    """One query-time setting of an index."""

    label: str
    nprobes: int = 20
    refine_factor: int | str | None = None  # "auto": the Searcher's default, resolved from the table's index
    ef: int | None = None
    results: dict = field(default_factory=dict)


def measure_setting(db: Path, table, queries: np.ndarray, truth: list[list[str]], setting: Setting, k: int,
                    repeats: int) -> dict:
    """p50/p95 of Searcher.search_vector and of the bare LanceDB query, and recall@k, for one setting."""
    cfg = MmragConfig(store={"db_uri": str(db)}, search={
        "mode": "cosine", "text_k": k, "nprobes": setting.nprobes, "refine_factor": setting.refine_factor,
        "ef": setting.ef, "cosine_threshold": -1.0,
    })
    searcher = Searcher(cfg)
    searcher.search_vector(queries[0])  # open the table, warm caches
    refine = searcher.refine_factor("text")  # what the Searcher uses ("auto" resolved)
    searcher_ms, lance_ms, recalls = [], [], []
    for _ in range(repeats):
        for q, expected in zip(queries, truth):
            elapsed, result = timed(searcher.search_vector, q)
            searcher_ms.append(elapsed)
            recalls.append(len({h.id for h in result.hits} & set(expected)) / k)

            def bare(vector=q):
                query = table.search(vector).distance_type("cosine").nprobes(setting.nprobes)
                if refine:
                    query = query.refine_factor(refine)
                if setting.ef:
                    query = query.ef(max(setting.ef, k * (refine or 1)))
                return query.select(["id", "_distance"]).limit(k).to_arrow()

            lance_ms.append(timed(bare)[0])
    return {"searcher": percentiles(searcher_ms), "lance": percentiles(lance_ms),
            "recall": float(np.mean(recalls))}


def measure_softmax_pool(db: Path, queries: np.ndarray, setting: Setting, pool: int = 10_000) -> tuple[float, float]:
    """p50/p95 of softmax-mode search (design settings for text) over a ``pool``-row candidate pool."""
    cfg = MmragConfig(store={"db_uri": str(db)}, search={
        "mode": "softmax", "softmax_pool": pool, "nprobes": setting.nprobes, "refine_factor": setting.refine_factor,
        "ef": setting.ef,
    })
    searcher = Searcher(cfg)
    searcher.search_vector(queries[0])
    return percentiles([timed(searcher.search_vector, q)[0] for q in queries])


def cold_process_ms(db: Path, queries: list[str], runs: int) -> tuple[float, float]:
    """p50/p95 of one-shot ``mmrag search`` processes (interpreter, imports, model load, search, exit)."""
    import subprocess

    exe = Path(sys.executable).with_name("mmrag")
    samples = []
    for query in queries[:runs]:
        started = time.perf_counter()
        subprocess.run([str(exe), "search", query, "--db", str(db), "--mode", "cosine", "--k", "10", "--json"],
                       check=True, capture_output=True, cwd=REPO_ROOT)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


#: bench name of each index type ``mmrag maintain`` can build
INDEX_TYPES = {"ivf_sq": "IVF_SQ", "ivf_pq": "IVF_PQ", "hnsw": "IVF_HNSW_SQ"}
#: LanceDB's ``index_type`` of each (what ``search.refine_factor = "auto"`` reads)
LANCE_INDEX_TYPES = {"ivf_sq": "IvfSq", "ivf_pq": "IvfPq", "hnsw": "IvfHnswSq"}


def index_grid(kind: str, *, quick: bool, large: bool) -> list[Setting]:
    """The query-time settings measured on an index of ``kind``, plus what ``mmrag search`` uses by default."""
    if kind == "ivf_sq":
        nprobes, refines = ((16,), (None, 5)) if quick else ((8, 16, 32), (None, 2, 5, 10))
        grid = [Setting(f"nprobes={n} refine={r}", nprobes=n, refine_factor=r) for n in nprobes for r in refines]
    elif kind == "ivf_pq":
        if quick:
            nprobes, refines = (16, 32), (None, 20)
        elif large:
            nprobes, refines = (8, 16, 32), (40, 50, 60, 80)
        else:
            nprobes, refines = (8, 16, 32), (None, 5, 10, 20)
        grid = [Setting(f"nprobes={n} refine={r}", nprobes=n, refine_factor=r) for n in nprobes for r in refines]
    else:
        # scalar quantisation limits recall on near-duplicate vectors: refine with exact vectors as for IVF_PQ
        if quick:
            nprobes, efs, refines = (2,), (100,), (None, 5)
        elif large:  # graph search breadth is what buys recall at 1M (ef 100 plateaus at 0.93)
            nprobes, efs, refines = (8, 16), (100, 200, 300, 400), (None, 5)
        else:
            nprobes, efs, refines = (4, 8, 16), (50, 100), (None, 5, 10)
        grid = [Setting(f"nprobes={n} ef={e} refine={r}", nprobes=n, ef=e, refine_factor=r)
                for n in nprobes for e in efs for r in refines]
    defaults = SearchConfig()
    refine = defaults.refine_factor
    if refine == "auto":
        refine = f"auto={auto_refine_factor(LANCE_INDEX_TYPES[kind])}"
    grid.append(Setting(f"search defaults (nprobes={defaults.nprobes} refine={refine} ef={defaults.ef})",
                        nprobes=defaults.nprobes, refine_factor=defaults.refine_factor, ef=defaults.ef))
    return grid


def scale_run(workdir: Path, records: list[dict], base: np.ndarray, queries: np.ndarray, rows: int, *,
              noise: float, indexes: list[str], quick: bool, draws: int = 1, k: int = 10) -> dict:
    """Flat and indexed latency/recall at ``rows`` rows."""
    db = workdir / f"scale-{rows}"
    shutil.rmtree(db, ignore_errors=True)
    report: dict = {"rows": rows, "indexes": {}}
    build_ms, table = timed(build_scaled_table, db, records, base, rows, noise=noise)
    report["write_s"] = build_ms / 1000
    truth = exact_top_ids(table, queries, k)
    repeats = 1 if quick else 2
    large = rows > 200_000
    # exhaustive search is slow at scale: a subset of queries, once
    flat_n = 10 if large else len(queries)
    report["flat"] = measure_setting(db, table, queries[:flat_n], truth[:flat_n], Setting("flat"), k,
                                     1 if large else repeats)
    print(f"  {rows} rows written in {report['write_s']:.0f} s; flat p50 {report['flat']['searcher'][0]:.1f} ms", flush=True)
    for kind, draw in [(kind, d) for kind in indexes for d in range(1, (1 if kind == "hnsw" else draws) + 1)]:
        # the configs `mmrag maintain` builds, so that what is measured is what users get
        config = index_config(rows, base.shape[1], INDEX_TYPES[kind])
        grid = index_grid(kind, quick=quick, large=large)
        name = kind if draws == 1 or kind == "hnsw" else f"{kind} draw {draw}"
        index_ms, _ = timed(table.create_index, "vector", config=config, replace=True)
        table.wait_for_index([vector_index_name(table)])
        entry = {"build_s": index_ms / 1000, "config": repr(config).split("(")[0] + f"(partitions={config.num_partitions})",
                 "settings": {}}
        print(f"  {name}: built in {entry['build_s']:.0f} s", flush=True)
        for setting in grid:
            entry["settings"][setting.label] = measure_setting(db, table, queries, truth, setting, k, repeats)
            s = entry["settings"][setting.label]
            print(f"    {setting.label:<24} p50 {s['searcher'][0]:6.1f} ms  p95 {s['searcher'][1]:6.1f} ms  "
                  f"recall@10 {s['recall']:.3f}", flush=True)
        best = best_setting(entry)
        if best:  # the design's softmax mode over a 10k-candidate pool from the index, at the best setting
            setting = next(g for g in grid if g.label == best[0])
            entry["softmax_pool"] = measure_softmax_pool(db, queries, setting)
            print(f"    softmax pool=10000 at {best[0]}: p50 {entry['softmax_pool'][0]:.1f} ms", flush=True)
        report["indexes"][name] = entry
        table.drop_index(vector_index_name(table))
    if not quick:
        shutil.rmtree(db, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- report


def best_setting(entry: dict, target_recall: float = 0.95) -> tuple[str, dict] | None:
    """The lowest-p50 setting reaching ``target_recall`` (None when none does)."""
    passing = [(label, s) for label, s in entry["settings"].items() if s["recall"] >= target_recall]
    return min(passing, key=lambda kv: kv[1]["searcher"][0]) if passing else None


def defaults_summary(report: dict) -> list[str]:
    """One line per index type: the search defaults' recall@10 and p50 range over its k-means draws."""
    lines = []
    for kind in INDEX_TYPES:
        rows = [(label, s) for name, entry in report["indexes"].items() if name.split(" draw ")[0] == kind
                for label, s in entry["settings"].items() if label.startswith("search defaults")]
        if rows:
            recalls = [s["recall"] for _, s in rows]
            p50s = [s["searcher"][0] for _, s in rows]
            lines.append(f"- {kind}, {rows[0][0]}, {len(rows)} build(s): recall@10 {min(recalls):.3f}-{max(recalls):.3f}, "
                         f"p50 {min(p50s):.1f}-{max(p50s):.1f} ms.")
    return lines


def markdown(info: dict, load_before: str, load_after: str, corpus: dict, part1: dict, scale: list[dict],
             args: argparse.Namespace) -> str:
    """The ``## query_latency`` section."""
    lines = [SECTION, ""]
    lines.append(f"Command: `.venv/bin/python -m bench.query_latency {' '.join(sys.argv[1:])}` "
                 f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    lines.append("")
    lines.append(f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM, {info['os']}, Python {info['python']}; "
                 f"lancedb {info['lancedb']}, pylance {info['pylance']}, numpy {info['numpy']}, torch {info['torch']}, "
                 f"sentence-transformers {info['sentence-transformers']}; torch threads {info['torch_threads']}. "
                 f"Load average at start {load_before}, "
                 f"at end {load_after} (LanceDB's own threads count in it; a higher load from other jobs "
                 "would make these latencies upper bounds).")
    lines.append("")
    lines.append(f"Corpus: {corpus['chunks']} paragraph chunks of {corpus['files']} real articles (sample + colah), "
                 f"embedded with MiniLM (384-d); {len(QUESTIONS)} real question texts as queries.")
    lines.append("")
    lines.append("### Warm search vs loading the model per query (embed + search, cosine, k=10, no reranker)")
    lines.append("")
    lines.append("| path | p50 ms | p95 ms | n |")
    lines.append("|---|---:|---:|---:|")
    lines.append(f"| warm `Searcher.search` (embed + search) | {part1['warm'][0]:.1f} | {part1['warm'][1]:.1f} | {part1['n_warm']} |")
    lines.append(f"| &nbsp;&nbsp;of which embed | {part1['warm_embed'][0]:.1f} | {part1['warm_embed'][1]:.1f} | |")
    lines.append(f"| &nbsp;&nbsp;of which search | {part1['warm_search'][0]:.1f} | {part1['warm_search'][1]:.1f} | |")
    lines.append(f"| warm, softmax mode (design settings, exact over {corpus['chunks']} rows) | {part1['warm_softmax'][0]:.1f} | "
                 f"{part1['warm_softmax'][1]:.1f} | {len(QUESTIONS)} |")
    lines.append(f"| model loaded per query (the design's approach) | {part1['cold'][0]:.1f} | {part1['cold'][1]:.1f} | {part1['n_cold']} |")
    lines.append(f"| one-shot `mmrag search` process per query (imports + load + search) | {part1['process'][0]:.0f} | "
                 f"{part1['process'][1]:.0f} | 3 |")
    lines.append("")
    lines.append(f"**Ratio cold / warm (p50): {part1['ratio']:.0f}×** (model reloaded in a running process); "
                 f"{part1['process'][0] / part1['warm'][0]:.0f}× for a new process per query. The design reloaded CLIP ViT-B/16 (150 M "
                 "parameters) per query; MiniLM (22 M) is measured here, so the real gap was larger.")
    lines.append("")
    lines.append(f"### Flat vs indexed search at scale (noise σ={args.noise} per component, renormalised; "
                 "latency of `Searcher.search_vector`, k=10; recall@10 against `bypass_vector_index()`)")
    lines.append("")
    for report in scale:
        lines.append(f"**{report['rows']:,} rows** (written in {report['write_s']:.0f} s)")
        lines.append("")
        lines.append("| search | build s | p50 ms | p95 ms | bare LanceDB p50 ms | recall@10 |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        flat = report["flat"]
        lines.append(f"| flat (exact) | – | {flat['searcher'][0]:.1f} | {flat['searcher'][1]:.1f} | "
                     f"{flat['lance'][0]:.1f} | {flat['recall']:.3f} |")
        for kind, entry in report["indexes"].items():
            for label, s in entry["settings"].items():
                lines.append(f"| {kind} {label} | {entry['build_s']:.0f} | {s['searcher'][0]:.1f} | {s['searcher'][1]:.1f} | "
                             f"{s['lance'][0]:.1f} | {s['recall']:.3f} |")
        lines.append("")
        for kind, entry in report["indexes"].items():
            best = best_setting(entry)
            if best:
                pool = entry.get("softmax_pool")
                lines.append(f"- {kind} ({entry['config']}): fastest setting with recall@10 ≥ 0.95 is `{best[0]}`: "
                             f"p50 {best[1]['searcher'][0]:.1f} ms, p95 {best[1]['searcher'][1]:.1f} ms, "
                             f"recall {best[1]['recall']:.3f}"
                             + (f"; softmax mode over a 10k pool at that setting: p50 {pool[0]:.0f} ms, "
                                f"p95 {pool[1]:.0f} ms." if pool else "."))
            else:
                lines.append(f"- {kind} ({entry['config']}): no setting reached recall@10 ≥ 0.95.")
        lines.extend(defaults_summary(report))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown section (and write it with ``--write-results``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=None, help="table sizes for part 2 (default 100000)")
    parser.add_argument("--quick", action="store_true", help="20k rows, a small grid, fewer queries")
    parser.add_argument("--index", nargs="+", choices=[*INDEX_TYPES, "all"], default=["all"],
                        help="indexes built per size")
    parser.add_argument("--large-index", nargs="+", choices=[*INDEX_TYPES, "all"], default=None,
                        help="indexes for sizes over 200k rows (default: as --index)")
    parser.add_argument("--draws", type=int, default=1,
                        help="build each IVF index this many times (k-means draws differ) and measure each")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads for query embedding (1 avoids spin-wait collapse on a busy machine)")
    parser.add_argument("--noise", type=float, default=0.015, help="Gaussian noise per component of replicas")
    parser.add_argument("--cold-queries", type=int, default=None, help="queries with the model loaded each time")
    parser.add_argument("--no-colah", action="store_true", help="only the sample corpus")
    parser.add_argument("--workdir", type=Path, default=None, help="where tables are written (default: a temp dir)")
    parser.add_argument("--write-results", action="store_true", help=f"replace the '{SECTION}' section of {RESULTS}")
    args = parser.parse_args(argv)
    rows = args.rows if args.rows is not None else ([20_000] if args.quick else [100_000])
    cold_queries = args.cold_queries or (3 if args.quick else 10)
    def chosen(names: list[str]) -> list[str]:
        return list(INDEX_TYPES) if "all" in names else list(dict.fromkeys(names))

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info, load_before = machine_info(), load_average()
    print(f"machine: {info}\nload average: {load_before}\nworkdir: {workdir}", flush=True)

    from mmrag.pipelines.embed import create_embedder

    embedder = create_embedder(EmbedConfig(name="minilm"))
    files = corpus_files(not args.no_colah)
    db, records, base = build_corpus_db(workdir, embedder, not args.no_colah)
    corpus = {"chunks": len(records), "files": len(files)}
    print(f"corpus: {corpus}", flush=True)
    questions = QUESTIONS[:10] if args.quick else QUESTIONS
    part1 = warm_vs_cold(db, questions, cold_queries)
    print(f"warm p50/p95 {part1['warm'][0]:.1f}/{part1['warm'][1]:.1f} ms; cold {part1['cold'][0]:.0f}/"
          f"{part1['cold'][1]:.0f} ms; ratio {part1['ratio']:.0f}x", flush=True)
    query_vectors = embedder.embed_texts(questions)
    scale = [scale_run(workdir, records, base, query_vectors, n, noise=args.noise, quick=args.quick, draws=args.draws,
                       indexes=chosen(args.large_index or args.index) if n > 200_000 else chosen(args.index))
             for n in rows]
    import torch

    info["torch_threads"] = str(torch.get_num_threads())
    section = markdown(info, load_before, load_average(), corpus, part1, scale, args)
    print("\n" + section)
    if args.write_results:
        replace_section(section, SECTION)  # re-reads RESULTS.md just before writing
        print(f"wrote {SECTION} in {RESULTS}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
