"""IVF_PQ against IVF_HNSW_SQ on ~100k MiniLM-like vectors: build time, query p50, recall@10 against flat search.

MiniLM runs at ~30 texts/s on this 2-core machine, so 100k real embeddings would take an hour.
Instead ``--real`` sentences of real articles (../shared/corpora/colah, else data/sample) are
embedded with the real MiniLM, and the rest are mixtures of two real vectors plus noise,
renormalised: they keep the real vectors' anisotropic, clustered geometry (which is what makes
random Gaussian vectors a misleading benchmark). Queries are held-out real sentences.

    .venv/bin/python -m bench.vector_index [--quick] [--rows 100000] [--real 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


from bench.machine import machine_info
from mmrag.pipelines.maintenance import index_config


def real_sentences(limit: int) -> list[str]:
    """Sentences of real article text: the shared colah posts when present, else the sample corpus."""
    from mmrag.pipelines.chunk import split_sentences
    from mmrag.pipelines.parse import parse_html

    root = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "colah" / "posts"
    files = sorted(root.glob("*/index.html")) or sorted((Path(__file__).resolve().parents[1] / "data" / "sample").glob("*.html"))
    out: list[str] = []
    for f in files:
        doc = parse_html(f.read_bytes(), f.as_uri(), "text/html")
        for start, end in split_sentences(doc.text):
            sentence = doc.text[start:end]
            if 40 <= len(sentence) <= 400:
                out.append(sentence)
    rng = np.random.default_rng(0)
    rng.shuffle(out)
    return out[:limit]


def minilm_like(real: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` vectors: mixtures of two real vectors plus 5 % noise, L2-normalised."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(real), rows), rng.integers(0, len(real), rows)
    w = rng.uniform(0.6, 1.0, (rows, 1)).astype(np.float32)
    v = w * real[i] + (1 - w) * real[j] + 0.05 * rng.standard_normal((rows, real.shape[1])).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def measure(table, queries: np.ndarray, truth: list[set], **search) -> tuple[float, float]:
    """(p50 ms, recall@10) of ``queries`` with the given search options against ``truth``."""
    times, hits = [], 0
    for q, expected in zip(queries, truth):
        start = time.perf_counter()
        builder = table.search(q).distance_type("cosine").limit(10)
        for name, value in search.items():
            builder = getattr(builder, name)() if value is True else getattr(builder, name)(value)
        found = builder.select(["id", "_distance"]).to_list()
        times.append((time.perf_counter() - start) * 1000)
        hits += len(expected & {r["id"] for r in found})
    return float(np.median(times)), hits / (10 * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=2000, help="real MiniLM embeddings the rows are derived from")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20k rows from 600 real vectors")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.real, args.queries = 20_000, 600, 50
    import lancedb

    from mmrag.config import EmbedConfig
    from mmrag.pipelines.embed import create_embedder

    sentences = real_sentences(args.real + args.queries)
    started = time.perf_counter()
    cache = Path(__file__).resolve().parents[1] / ".mmrag" / "bench-cache" / f"minilm-sentences-{len(sentences)}.npy"
    if cache.is_file():  # embedding is the slow part (~30 texts/s here): reuse the last run's real vectors
        vectors = np.load(cache)
    else:
        vectors = create_embedder(EmbedConfig(name="minilm")).embed_texts(sentences)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
    embed_s = time.perf_counter() - started
    real, queries = vectors[: -args.queries], vectors[-args.queries :]
    data = minilm_like(real, args.rows)
    print(f"{machine_info()}\n{len(sentences)} real sentences embedded in {embed_s:.0f}s; {args.rows} rows of dim {data.shape[1]}")

    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), data.shape[1])
        results = {}
        for kind in ("IVF_PQ", "IVF_HNSW_SQ"):
            table = db.create_table(kind, pa.table({"id": pa.array(range(args.rows), pa.int64()), "vector": flat}))
            exact_ms, _ = measure(table, queries[:10], [set()] * 10, bypass_vector_index=True)
            truth = [{r["id"] for r in table.search(q).distance_type("cosine").limit(10).bypass_vector_index()
                      .select(["id", "_distance"]).to_list()} for q in queries]
            start = time.perf_counter()
            table.create_index("vector", config=index_config(args.rows, data.shape[1], kind))
            build_s = time.perf_counter() - start
            row = {"build_s": build_s, "flat_p50_ms": exact_ms}
            if kind == "IVF_PQ":
                row["nprobes20"] = measure(table, queries, truth, nprobes=20)
                row["nprobes20_refine10"] = measure(table, queries, truth, nprobes=20, refine_factor=10)
            else:
                row["ef64"] = measure(table, queries, truth, ef=64)
                row["ef128"] = measure(table, queries, truth, ef=128)
            results[kind] = row
        print(f"\n| index | build s | flat p50 ms | setting | p50 ms | recall@10 |\n|---|---|---|---|---|---|")
        for kind, row in results.items():
            for setting, value in row.items():
                if isinstance(value, tuple):
                    print(f"| {kind} | {row['build_s']:.1f} | {row['flat_p50_ms']:.1f} | {setting} | {value[0]:.1f} | {value[1]:.3f} |")


if __name__ == "__main__":
    main()
