"""Throughput of the pipeline's embed path against a bare model loop, same inputs, same batch size, same run.

* ``minilm`` (real weights): ``embed_texts`` vs tokenised batches through the transformer + mean pooling.
* ``clip`` at ViT-B/16 sizes (random weights: no checkpoint can be downloaded here; speed does not
  depend on the values): ``embed_texts`` vs ``get_text_features`` on pre-tokenised batches, and
  ``embed_image_bytes`` (PNG decode + preprocessing prefetched in a worker thread) vs
  ``get_image_features`` on pre-decoded, pre-processed pixel batches.

Target: pipeline ≥ 0.9 × bare. Results go to bench/RESULTS.md under "embed_throughput".

    .venv/bin/python -m bench.embed_throughput            # 256 texts, 64 images, 2 passes
    .venv/bin/python -m bench.embed_throughput --quick    # 64 texts, 32 images, 1 pass
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from bench.results import RESULTS, replace_section
CORPUS = REPO_ROOT.parent / "shared" / "corpora" / "colah" / "posts"
SECTION = "embed_throughput"

VIT_B16_TEXT = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8}
VIT_B16_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "image_size": 224, "patch_size": 16}


def corpus_texts(count: int) -> list[str]:
    """Paragraphs of the colah articles (or generated sentences when the corpus is absent), ``count`` of them."""
    paragraphs: list[str] = []
    for page in sorted(CORPUS.glob("*/index.html")):
        for raw in re.findall(r"<p>(.*?)</p>", page.read_text(encoding="utf-8", errors="replace"), flags=re.S):
            text = " ".join(re.sub(r"<[^>]+>", " ", raw).split())
            if len(text) >= 30:
                paragraphs.append(text)
    if not paragraphs:
        paragraphs = [f"sentence {i} about convolutional networks, attention and the chain rule" for i in range(50)]
    return [paragraphs[i % len(paragraphs)] for i in range(count)]


def corpus_pngs(count: int) -> list[bytes]:
    """PNG figures of the colah articles (or generated 640×480 PNGs when the corpus is absent)."""
    files = sorted(CORPUS.glob("*/img/*.png"))[:count]
    blobs = [f.read_bytes() for f in files]
    if len(blobs) < count:
        from tests.tiny_checkpoints import png_bytes, textured_images

        blobs += [png_bytes(im) for im in textured_images(count - len(blobs), size=(640, 480))]
    return blobs


def paired_runs(
    chunks: list[tuple[Callable[[], object], Callable[[], object], int]], repeats: int
) -> tuple[float, float, float]:
    """Time each chunk's bare and pipeline runs back to back (order alternating), ``repeats`` times over.

    Each chunk is ``(bare, pipeline, n_items)``. Pairs a few seconds apart see the same load from
    other processes, so the median of the per-pair ratios is steady on a shared machine where
    whole-run timings are not. Returns total bare seconds, total pipeline seconds, median ratio
    (pipeline items/s ÷ bare items/s).
    """
    bare_total = pipeline_total = 0.0
    ratios = []
    turn = 0
    for _ in range(repeats):
        for bare, pipeline, _n in chunks:
            seconds = {}
            order = [("bare", bare), ("pipeline", pipeline)]
            for name, run in order if turn % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                run()
                seconds[name] = time.perf_counter() - start
            turn += 1
            bare_total += seconds["bare"]
            pipeline_total += seconds["pipeline"]
            ratios.append(seconds["bare"] / seconds["pipeline"])
    return bare_total, pipeline_total, statistics.median(ratios)


def measured(what: str, n: int, chunks: list, repeats: int) -> dict:
    """One result row: items, total bare / pipeline seconds over all repeats, median paired ratio."""
    bare_s, pipeline_s, ratio = paired_runs(chunks, repeats)
    row = {"what": what, "n": n, "repeats": repeats, "bare_s": bare_s, "pipeline_s": pipeline_s, "ratio": ratio}
    print(f"  {what}: bare {n * repeats / bare_s:.1f}/s, pipeline {n * repeats / pipeline_s:.1f}/s, "
          f"median paired ratio {ratio:.2f}", flush=True)
    return row


def chunk_ranges(n_items: int, batch_size: int, batches_per_chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` item ranges of ``batches_per_chunk`` batches each."""
    step = batch_size * batches_per_chunk
    return [(i, min(i + step, n_items)) for i in range(0, n_items, step)]


def bench_minilm(texts: list[str], batch_size: int, repeats: int, batches_per_chunk: int) -> dict:
    """minilm ``embed_texts`` against its transformer + mean pooling on pre-tokenised batches."""
    import torch

    from mmrag.config import EmbedConfig
    from mmrag.pipelines.embed import create_embedder

    embedder = create_embedder(EmbedConfig(batch_size=batch_size, device="cpu"))
    st = embedder._model  # the SentenceTransformer the pipeline uses: the bare loop runs its transformer directly
    transformer, tokenizer = st[0].auto_model, st.tokenizer

    def tokenised(start: int, stop: int) -> list:
        return [
            tokenizer(texts[i : min(i + batch_size, stop)], padding=True, truncation=True,
                      max_length=embedder.max_input_tokens, return_tensors="pt")
            for i in range(start, stop, batch_size)
        ]

    def bare(batches: list) -> None:
        with torch.inference_mode():
            for enc in batches:
                hidden = transformer(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    chunks = []
    for start, stop in chunk_ranges(len(texts), batch_size, batches_per_chunk):
        batches = tokenised(start, stop)
        chunks.append((lambda b=batches: bare(b), lambda a=start, z=stop: embedder.embed_texts(texts[a:z]), stop - start))
    embedder.embed_texts(texts[:batch_size]), bare(tokenised(0, batch_size))  # warm-up
    return measured("minilm texts", len(texts), chunks, repeats)


def bench_clip(texts: list[str], pngs: list[bytes], batch_size: int, repeats: int, batches_per_chunk: int) -> list[dict]:
    """ViT-B/16-sized CLIP: ``embed_texts`` and ``embed_image_bytes`` against the same model on prepared inputs."""
    import torch

    from mmrag.config import EmbedConfig, ImageConfig
    from mmrag.pipelines.clip_embedder import decode_images
    from mmrag.pipelines.embed import create_embedder
    from tests.tiny_checkpoints import save_random_clip

    with tempfile.TemporaryDirectory(prefix="clip-vit-b16-") as tmp:
        start = time.perf_counter()
        save_random_clip(Path(tmp), text=VIT_B16_TEXT, vision=VIT_B16_VISION, projection_dim=512, vocab_size=49408,
                         tokenizer_texts=texts)
        print(f"  random ViT-B/16 CLIP written in {time.perf_counter() - start:.1f} s", flush=True)
        clip = create_embedder(EmbedConfig(name="clip", model_path=tmp, batch_size=batch_size, device="cpu"))
    model = clip._model  # the bare loop calls the very same CLIPModel the embedder wraps

    def bare_texts(batches: list) -> None:
        with torch.inference_mode():
            for enc in batches:
                out = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
                torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()

    def bare_images(batches: list) -> None:
        with torch.inference_mode():
            for pixels in batches:
                torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1).numpy()

    text_chunks, image_chunks = [], []
    for start, stop in chunk_ranges(len(texts), batch_size, batches_per_chunk):
        batches = [
            clip._tokenizer(texts[i : min(i + batch_size, stop)], padding=True, truncation=True,
                            max_length=clip.max_input_tokens, return_tensors="pt")
            for i in range(start, stop, batch_size)
        ]
        text_chunks.append((lambda b=batches: bare_texts(b), lambda a=start, z=stop: clip.embed_texts(texts[a:z]), stop - start))
    for start, stop in chunk_ranges(len(pngs), batch_size, batches_per_chunk):
        batches = [
            clip.pixel_values(decode_images(pngs[i : min(i + batch_size, stop)], ImageConfig()))
            for i in range(start, stop, batch_size)
        ]
        image_chunks.append(
            (lambda b=batches: bare_images(b), lambda a=start, z=stop: clip.embed_image_bytes(pngs[a:z]), stop - start)
        )
    clip.embed_texts(texts[:batch_size]), clip.embed_image_bytes(pngs[:2])  # warm-up
    return [
        measured("clip ViT-B/16 texts", len(texts), text_chunks, repeats),
        measured("clip ViT-B/16 images (PNG bytes)", len(pngs), image_chunks, repeats),
    ]


def machine_info() -> str:
    """CPU model, cores, library versions and the load average (other processes skew every figure)."""
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = load_average()
    return (f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, Python {platform.python_version()}, load average at start {load}")


def load_average() -> str:
    """The 1/5/15-minute load averages, or ``n/a``."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    """Run the measurements, print the table and write it to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 texts, 32 images, one pass")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the inputs per measurement")
    parser.add_argument("--batches-per-chunk", type=int, default=2,
                        help="batches timed back to back per bare/pipeline pair (the pipeline prefetches within a chunk)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.images, args.repeats = 64, 32, 1

    info = machine_info()
    print(info, flush=True)
    started = time.perf_counter()
    texts, pngs = corpus_texts(args.texts), corpus_pngs(args.images)
    rows = [bench_minilm(texts, args.batch_size, args.repeats, args.batches_per_chunk)]
    rows += bench_clip(texts, pngs, args.batch_size, args.repeats, args.batches_per_chunk)
    total = time.perf_counter() - started

    lines = [
        f"Command: `.venv/bin/python -m bench.embed_throughput{' --quick' if args.quick else ''}` "
        f"(batch size {args.batch_size}, {args.repeats} passes, pairs of {args.batches_per_chunk} batches, "
        f"total {total:.0f} s, load average at end {load_average()})",
        "",
        f"Machine: {info}",
        "",
        "| input | n × passes | bare loop items/s | pipeline items/s | pipeline / bare (median of pairs) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        n = row["n"] * row["repeats"]
        lines.append(f"| {row['what']} | {row['n']} × {row['repeats']} | {n / row['bare_s']:.1f} | "
                     f"{n / row['pipeline_s']:.1f} | {row['ratio']:.2f} |")
    lines += [
        "",
        "Bare loop: the same model object on inputs tokenised / decoded and preprocessed beforehand, same batch "
        "size. Pipeline: the embedder's own method, tokenising (texts) or decoding PNG bytes + preprocessing "
        "(images, one batch ahead in a worker thread) inside the timed run. Each pair (bare, pipeline) runs "
        f"back to back on the same {args.batches_per_chunk} batches, order alternating; the ratio is the median "
        "over pairs, so load from other processes, if any, hits both sides alike (it lowers the absolute "
        "items/s; the load averages above tell how much ran beside). CLIP weights are random at ViT-B/16 sizes (vision 768×12, "
        "patch 16, 224 px; text 512×12; projection 512); texts are colah paragraphs, images colah PNG figures.",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        replace_section(f"## {SECTION}\n\n{report}\n", f"## {SECTION}")  # re-reads RESULTS.md just before writing
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
