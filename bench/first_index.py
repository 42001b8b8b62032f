"""The first index of a real blog: wall time against the bare model work it needs, OCR's cost, OCR's words.

Serves ``../shared/corpora/colah`` on 127.0.0.1 and, after an untimed one-page index (Prefect's start-up, the
model load), indexes its 14 posts from an empty database with the defaults (OCR on, inline: each batch's
figures read beside the embedding, image rows embedded once), with OCR off, and with OCR deferred
(``images.ocr_deferred: true``: pages committed first, then OCR and re-embedding of those image rows), each
``--repeat`` times (default 2, the three in turn, each after Prefect's temporary server has gone idle: it
digests the previous run's events for a while; the medians are reported, with the range). In the same
process it then measures the bare model work the default run needed: MiniLM encoding of the same chunk and
image-surrogate texts (one ``SentenceTransformer.encode`` call at the pipeline's batch size) plus OCR of the
same distinct images with the same engine settings, one after the other in this process (the engine on
every core). Prints:

* total wall time, time until every page was committed (searchable), per-stage seconds and rates of the
  default run;
* pipeline / bare (target ≤ 1.3) and OCR-on / OCR-off wall time (target ≤ 1.5), whole run and until
  searchable; the same ratios for the deferred run;
* the OCR words-found ratio (target ≥ 0.95): the share of the words a person reads in 60 of the figures
  (``data/eval/colah-figure-text.jsonl``, transcribed by hand) that the default run's stored OCR text has,
  divided by the same share for full-size OCR of the same images with the engine settings used before
  issue #15 (PP-OCRv4; rapidocr's own detection size, up to 2000 px; direction classifier on; recognition
  padded to 320 px; rapidocr's original models). Words: the multiset of lower-cased alphanumeric words of
  2+ characters after NFKC, summed over figures. Also printed: how many words of the full-size reading
  the defaults' reading has (over all figures); a different model reads differently (``x₁`` for ``x1``,
  ``chunk size`` for ``chunksize``), so that agreement is not a measure of words found. The reference
  texts are cached in ``--workdir`` (``ocr-reference.json``).

    .venv/bin/python -m bench.first_index                    # all of it (about 8 min on 2 idle cores)
    .venv/bin/python -m bench.first_index --write-results    # and replace the first_index section of RESULTS.md

The machine may be shared: the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
import unicodedata
from collections import Counter
from pathlib import Path
from statistics import median

from bench._run import CORPUS, isolate_prefect, serve, wait_for_prefect_idle
from bench.machine import load_average, machine_info
from bench.results import RESULTS, replace_section

SECTION = "first_index"
#: OCR settings before issue #15 ("today's full-size OCR" of the words-found reference): rapidocr's original models.
REFERENCE_OCR = {"ocr_models": "pp-ocrv4", "ocr_max_side": 0, "ocr_angle_cls": True, "ocr_rec_width": 320,
                 "ocr_fold_models": False}
#: 60 of the colah figures (a seeded random sample of the 175 distinct ones), their printed text transcribed by hand.
FIGURE_TEXT = Path(__file__).resolve().parents[1] / "data" / "eval" / "colah-figure-text.jsonl"


def words(text: str) -> Counter:
    """Lower-cased alphanumeric words of 2+ characters, with their counts (after Unicode NFKC, so a subscript
    ``x₁`` counts as ``x1``, the way the hand transcriptions write it)."""
    folded = unicodedata.normalize("NFKC", text or "").lower()
    return Counter(w for w in re.findall(r"[a-z0-9]+", folded) if len(w) >= 2)


def figure_text_truth(path: Path = FIGURE_TEXT) -> dict[str, str]:
    """The hand transcriptions of colah figures (``data/eval/colah-figure-text.jsonl``): text by image sha256."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["sha256"]: row["text"] for row in rows}


def truth_recall(truth: dict[str, str], found: dict[str, str]) -> tuple[float, int]:
    """(share of the transcribed words that ``found`` reads, transcribed words) over the figures of ``truth``
    that ``found`` has (an image the run did not read counts as read with no words)."""
    hit, total = words_found(truth, found)
    return (hit / total if total else 1.0), total


def words_found(reference: dict[str, str], found: dict[str, str]) -> tuple[int, int]:
    """(reference words also found, reference words), summed over the images of ``reference``."""
    hit = total = 0
    for sha, text in reference.items():
        ref = words(text)
        total += sum(ref.values())
        hit += sum((ref & words(found.get(sha, ""))).values())
    return hit, total


def index_once(sources: list[str], db: Path, ocr: bool, deferred: bool | None = None) -> tuple[float, object]:
    """Index ``sources`` into an empty ``db`` (OCR on or off; ``deferred`` None: the default); (wall s, summary)."""
    from mmrag.config import load_config  # deferred: after isolate_prefect() has set Prefect's environment
    from mmrag.flows.index import run_index

    for folder in (db, db.parent / f"{db.name}-raw"):  # always from an empty database
        if folder.exists():
            shutil.rmtree(folder)
    overrides = {"store.db_uri": str(db), "store.raw_dir": str(db.parent / f"{db.name}-raw"), "progress": False,
                 "images.ocr": ocr, "fetch.respect_robots": False}
    if deferred is not None:
        overrides["images.ocr_deferred"] = deferred
    cfg = load_config(None, overrides)
    started = time.perf_counter()
    summary = run_index(sources, cfg)
    return time.perf_counter() - started, summary


#: The runs compared: the defaults, OCR off, OCR deferred (database folder, index_once arguments).
RUNS = {"defaults": ("db-ocr", {"ocr": True}), "off": ("db-no-ocr", {"ocr": False}),
        "deferred": ("db-ocr-deferred", {"ocr": True, "deferred": True})}


def stored_work(db: Path) -> tuple[list[str], dict[str, bytes], dict[str, str]]:
    """What the OCR-on run embedded and read: chunk texts + surrogate texts, distinct image bytes, stored OCR text."""
    from mmrag.pipelines import store  # deferred: after isolate_prefect()

    s = store.IndexStore(str(db))
    chunk_table = next(n for n in s.table_names() if n.startswith("chunks__"))
    image_table = store.images_table_name("minilm")
    texts = s.read_table(chunk_table, ["text"]).column("text").to_pylist()
    images = s.read_table(image_table, ["surrogate_text", "image_sha256", "status"]).to_pylist()
    texts += [r["surrogate_text"] for r in images]
    shas = {r["image_sha256"] for r in images if r["status"] == "ok" and r["image_sha256"]}
    blobs = {r["sha256"]: r["data"] for r in s.read_where(store.IMAGE_BLOBS, ["sha256", "data"], "sha256", shas).to_pylist()}
    ocr = {r["image_sha256"]: r["text"] or "" for r in s.read_table(store.OCR_RESULTS, ["image_sha256", "text"]).to_pylist()}
    return texts, blobs, ocr


def bare_embed_seconds(texts: list[str]) -> float:
    """MiniLM over ``texts`` in one sentence-transformers call (which batches texts of similar length together)
    at the batch size the pipeline uses by default."""
    from mmrag.config import EmbedConfig  # deferred: after isolate_prefect(); loads torch
    from mmrag.pipelines.embed import create_embedder

    embedder = create_embedder(EmbedConfig())
    model, batch_size = embedder._model, embedder.batch_size
    model.encode(texts[:64], batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - started


def bare_ocr_seconds(blobs: dict[str, bytes], **settings) -> tuple[float, dict[str, str]]:
    from mmrag.config import ImageConfig  # deferred: after isolate_prefect()
    from mmrag.pipelines.ocr import ocr_image, resolve_backend

    backend = resolve_backend("auto")
    cfg = ImageConfig(**settings)
    texts = {}
    started = time.perf_counter()
    for sha, data in blobs.items():
        try:
            texts[sha] = ocr_image(data, backend=backend, image_cfg=cfg)
        except (ValueError, RuntimeError):
            texts[sha] = ""
    return time.perf_counter() - started, texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="loopback port the corpus is served on (default: any free one)")
    parser.add_argument("--workdir", type=Path, default=None, help="databases and the cached OCR reference go here")
    parser.add_argument("--write-results", action="store_true", help=f"replace the '{SECTION}' section of {RESULTS}")
    parser.add_argument("--repeat", type=int, default=2, help="index runs of each kind (medians reported)")
    args = parser.parse_args(argv)
    if not (CORPUS / "posts").is_dir():
        print(f"skipped: the colah corpus is not at {CORPUS}")
        return 2
    work = isolate_prefect()
    workdir = args.workdir or work
    workdir.mkdir(parents=True, exist_ok=True)
    info, load_before = machine_info(), load_average()
    print(f"{info}\nload average at start: {load_before}", flush=True)
    server, base_url = serve(CORPUS, args.port)
    walls: dict[str, list[float]] = {kind: [] for kind in RUNS}
    committed: dict[str, list[float]] = {kind: [] for kind in RUNS}
    summaries: dict[str, object] = {}
    try:
        sources = [f"{base_url}/posts/{p.name}/" for p in sorted((CORPUS / "posts").iterdir()) if p.is_dir()]
        index_once(sources[:1], workdir / "db-warmup", ocr=False)  # Prefect's start-up and the model load, untimed
        for round_ in range(max(1, args.repeat)):
            for kind, (db, options) in RUNS.items():
                waited = wait_for_prefect_idle()  # Prefect's server digests the last run's events for a while
                wall, summary = index_once(sources, workdir / db, **options)
                walls[kind].append(wall)
                committed[kind].append(summary.pages_committed_s)
                summaries[kind] = summary
                print(f"{kind} ({round_ + 1}, after {waited:.0f}s waiting for an idle Prefect server): {wall:.1f}s, every "
                      f"page committed after {summary.pages_committed_s:.1f}s  {summary.stage_seconds}", flush=True)
    finally:
        server.shutdown()
    load_mid = load_average()

    on, off, deferred = summaries["defaults"], summaries["off"], summaries["deferred"]
    wall_on, wall_off, wall_deferred = (median(walls[kind]) for kind in RUNS)
    committed_on, committed_deferred = median(committed["defaults"]), median(committed["deferred"])

    texts, blobs, stored_ocr = stored_work(workdir / RUNS["defaults"][0])
    embed_s = bare_embed_seconds(texts)
    ocr_s, _ = bare_ocr_seconds(blobs)
    print(f"bare: MiniLM {len(texts)} texts {embed_s:.1f}s, OCR {len(blobs)} images {ocr_s:.1f}s", flush=True)

    reference_file = workdir / "ocr-reference.json"
    reference = json.loads(reference_file.read_text()) if reference_file.exists() else {}
    missing = {sha: data for sha, data in blobs.items() if sha not in reference}
    ref_s = None
    if missing:
        ref_s, fresh = bare_ocr_seconds(missing, **REFERENCE_OCR)
        reference.update(fresh)
        reference_file.write_text(json.dumps(reference))
    reference = {sha: reference[sha] for sha in blobs}
    deferred_ocr = stored_work(workdir / RUNS["deferred"][0])[2]
    truth = {sha: text for sha, text in figure_text_truth().items() if sha in blobs}
    (run_recall, truth_words), (ref_recall, _), (deferred_recall, _) = (
        truth_recall(truth, found) for found in (stored_ocr, reference, deferred_ocr))
    hit, total = words_found(reference, stored_ocr)
    load_after = load_average()

    bare = embed_s + ocr_s
    ratio_bare = wall_on / bare
    ratio_ocr = wall_on / wall_off
    ratio_words = run_recall / ref_recall if ref_recall else 1.0
    per_image_ref = f"{ref_s / len(missing):.2f}" if ref_s else "cached"
    runs = len(walls["defaults"])

    def spread(kind: str) -> str:
        values = walls[kind]
        return f"{median(values):.1f} s" + (f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else "")

    def stage_list(summary) -> str:
        return ", ".join(f"{k} {v:.1f}s" + (f" ({summary.stage_rate[k]:g}/s)" if k in summary.stage_rate else "")
                         for k, v in summary.stage_seconds.items())

    text = "\n".join([
        f"## {SECTION}",
        "",
        f"Command: `.venv/bin/python -m bench.first_index{' --write-results' if args.write_results else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{info}. Load average at start {load_before}, after the index runs {load_mid}, at end {load_after} "
        "(the bench's own OCR workers count in it).",
        "",
        f"Corpus: the 14 colah posts served on 127.0.0.1; {on.pages_ok} pages, {on.chunks_total} chunks, "
        f"{on.images_total} image rows, {len(blobs)} distinct decoded images; defaults (OCR inline, engine "
        f"`{on.ocr_engine}`, {on.ocr_images} images read in {on.ocr_seconds:.1f} s of worker time, "
        f"{on.ocr_seconds_per_image or 0:.2f} s/image; {on.batches} batches, longest gap between commits "
        f"{on.commit_gap_max_s:.1f} s). An untimed one-page index first takes Prefect's start-up and the model load; "
        f"then each kind of run {runs} times, in turn (medians, range in brackets).",
        "",
        "| figure | value | target |",
        "|---|---:|---:|",
        f"| first index, defaults (OCR on, inline; wall) | {spread('defaults')} | |",
        f"| ... until every page was committed (searchable) | {committed_on:.1f} s | |",
        f"| first index, OCR off (wall) | {spread('off')} | |",
        f"| first index, OCR deferred (`images.ocr_deferred: true`; wall) | {spread('deferred')} | |",
        f"| ... until every page was committed (searchable) | {committed_deferred:.1f} s | |",
        f"| bare model work: MiniLM on {len(texts)} texts + OCR of {len(blobs)} images | {embed_s:.1f} s + {ocr_s:.1f} s "
        f"= {bare:.1f} s | |",
        f"| pipeline / bare | {ratio_bare:.2f} | ≤ 1.3 {'met' if ratio_bare <= 1.3 else 'NOT met'} |",
        f"| OCR on / OCR off, whole run | {ratio_ocr:.2f} | ≤ 1.5 {'met' if ratio_ocr <= 1.5 else 'NOT met'} |",
        f"| OCR on / OCR off, until every page is searchable | {committed_on / wall_off:.2f} | |",
        f"| transcribed words read ({len(truth)} figures transcribed by hand, {truth_words} words): defaults / "
        f"full-size OCR | {run_recall:.3f} / {ref_recall:.3f} | |",
        f"| OCR words found, defaults / full-size OCR | {ratio_words:.3f} | ≥ 0.95 {'met' if ratio_words >= 0.95 else 'NOT met'} |",
        f"| words of the full-size reading also in the defaults' ({total} words; reference {per_image_ref} s/image) | "
        f"{hit / total if total else 1.0:.3f} | |",
        f"| deferred: pipeline / bare, OCR on / off (whole run, until searchable), words found | "
        f"{wall_deferred / bare:.2f}, {wall_deferred / wall_off:.2f}, {committed_deferred / wall_off:.2f}, "
        f"{deferred_recall / ref_recall if ref_recall else 1.0:.3f} | |",
        "",
        f"Stages of the last default run (seconds, rate in items/s): {stage_list(on)} ({on.ocr_report()}). OCR-off run: "
        f"{stage_list(off)}. Deferred run: {stage_list(deferred)} ({deferred.ocr_report()}).",
        "",
    ])
    print(text)
    if args.write_results:
        replace_section(text, f"## {SECTION}")  # re-reads RESULTS.md just before writing
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
