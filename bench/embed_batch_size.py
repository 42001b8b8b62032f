"""MiniLM embedding time by batch size and order, against the index's old way measured in the same run.

The texts are the chunk and image-surrogate texts of an index database: ``--db`` (e.g. the ``db-ocr`` that
``bench.first_index --workdir DIR`` leaves, whose surrogates carry OCR text), else the 14 colah posts
(``../shared/corpora/colah``) indexed first with OCR off into a temporary database. Each setting embeds every
text once, in the order the database holds them, the way the index does (``embed_in_batches`` over the
embedder's ``embed_texts``, every core for torch):

* ``64, in order`` — the index before 74cd79c: consecutive slices of 64 texts, each padded to its longest text;
  the baseline of every ratio;
* ``N, by length`` — texts of similar length batched together (``by_length``), N per batch.

On a CPU the batch size is the larger effect: a batch's activations (attention scores, the 1536-wide
feed-forward layer) grow with batch × length and leave the caches. ``embed.batch_size`` defaults to
``CPU_BATCH_SIZE`` on a CPU; run this on another machine to see whether that holds there.

    .venv/bin/python -m bench.embed_batch_size                       # about 3 min on 2 idle cores
    .venv/bin/python -m bench.embed_batch_size --db /tmp/fi/db-ocr --sizes 64,16,8
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from bench.machine import load_average
from bench.retrieval_quality import index_database


def index_texts(db: Path) -> list[str]:
    """Chunk texts then image-surrogate texts of ``db``, in the order the tables hold them."""
    from mmrag.pipelines import store  # deferred: after isolate_prefect()

    s = store.IndexStore(str(db))
    chunk_table = next(n for n in s.table_names() if n.startswith("chunks__minilm"))
    texts = s.read_table(chunk_table, ["text"]).column("text").to_pylist()
    return texts + s.read_table(store.images_table_name("minilm"), ["surrogate_text"]).column("surrogate_text").to_pylist()


def measure(texts: list[str], batch_size: int, by_length: bool) -> tuple[float, float]:
    """(wall s, CPU s of this process) of embedding ``texts`` with MiniLM as the index does."""
    from mmrag.config import EmbedConfig  # deferred: after isolate_prefect(); loads torch
    from mmrag.pipelines.embed import create_embedder, embed_in_batches

    embedder = create_embedder(EmbedConfig(batch_size=batch_size, device="cpu"))
    embedder.embed_texts(texts[:batch_size])  # warm-up
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    embed_in_batches(texts, embedder.embed_texts, batch_size=batch_size, dimension=embedder.dimension,
                     by_length=by_length)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=None, help="index database whose texts are embedded (default: colah)")
    parser.add_argument("--sizes", default="64,32,16,8,4", help="batch sizes to measure by length (comma-separated)")
    args = parser.parse_args(argv)
    db = index_database(args.db, "db-embed-batch")
    if db is None:
        return 2
    texts = index_texts(db)
    print(f"{len(texts)} texts ({sum(map(len, texts)):,} characters); MiniLM, torch on every core", flush=True)
    settings = [(64, False)] + [(int(size), True) for size in args.sizes.split(",")]
    lines = ["| batch | order | wall s | CPU s | texts/s | wall, baseline / this |", "|---:|---|---:|---:|---:|---:|"]
    baseline = None
    for batch_size, by_length in settings:
        wall, cpu = measure(texts, batch_size, by_length)
        baseline = baseline or wall
        line = (f"| {batch_size} | {'by length' if by_length else 'in order (before)'} | {wall:.1f} | {cpu:.1f} | "
                f"{len(texts) / wall:.1f} | {baseline / wall:.2f} |")
        lines.append(line)
        print(line, flush=True)
    print(f"\nload average at end: {load_average()}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
