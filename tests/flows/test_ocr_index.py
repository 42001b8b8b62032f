"""OCR in the ``index`` flow: the words printed in an image land in its row and its text surrogate, so a
text-only embedder (MiniLM) finds the image by them; OCR runs once per image and is reused on
re-index; the opt-out flag and a missing engine. Real Prefect, LanceDB, MiniLM and OCR engine."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from mmrag.flows.index import run_index
from mmrag.config import load_config
from mmrag.pipelines.ocr import ocr_available
from mmrag.pipelines.retrieve import Searcher
from tests.helpers import image_rows_by_file_name
from tests.tiny_checkpoints import textured_images

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]



def words_png(text: str) -> bytes:
    font = ImageFont.load_default(size=52)
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 60, bottom - top + 60), "white")
    ImageDraw.Draw(image).text((30 - left, 30 - top), text, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_site(root: Path, caption: str) -> Path:
    """A local page with two figures under the same caption: one shows printed words, one only texture."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notice.png").write_bytes(words_png("PAYMENT OVERDUE"))
    buffer = io.BytesIO()
    textured_images(1)[0].resize((240, 120)).save(buffer, "PNG")
    (root / "texture.png").write_bytes(buffer.getvalue())
    figures = "".join(f'<figure><img src="{name}"><figcaption>{caption}</figcaption></figure>'
                      for name in ("texture.png", "notice.png"))
    (root / "scans.html").write_text(
        "<html><head><title>Scans</title></head><body><article><h1>Scanned documents</h1>"
        f"<p>Two scanned documents from the office archive are shown below.</p>{figures}</article></body></html>",
        encoding="utf-8")
    return root


def make_config(tmp_path: Path, **overrides):
    values = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False,
              "images.ocr": True}
    values.update(overrides)
    return load_config(None, values)


def squashed(text: str | None) -> str:
    return (text or "").upper().replace(" ", "")  # PP-OCR sometimes drops the space between words


def test_ocr_text_is_stored_searchable_and_reused(tmp_path, minilm):
    if not ocr_available():
        pytest.skip("no OCR engine installed")
    site = write_site(tmp_path / "site", "A scanned document")
    cfg = make_config(tmp_path)
    first = run_index([str(site)], cfg)
    rows = image_rows_by_file_name(cfg)
    assert "PAYMENTOVERDUE" in squashed(rows["notice.png"]["ocr_text"])
    assert "PAYMENTOVERDUE" in squashed(rows["notice.png"]["surrogate_text"])
    assert rows["notice.png"]["surrogate_text"].startswith("A scanned document")
    assert "PAYMENT" not in squashed(rows["texture.png"]["ocr_text"])
    assert first.ocr_images == 2 and first.ocr_reused == 0 and first.ocr_seconds > 0
    assert first.ocr_seconds_per_image == pytest.approx(first.ocr_seconds / 2, abs=1e-3)
    assert "s/image" in first.to_text() and "s/image" in first.to_markdown()

    # Same caption on both: only the printed words tell them apart for a text-only embedder.
    hits = Searcher(cfg, embedder=minilm).search("payment overdue", target="images", mode="cosine", k=2).hits
    assert hits[0].src_url.endswith("notice.png") and "OVERDUE" in squashed(hits[0].ocr_text)

    # The page changes (captions), the images do not: OCR is not run again.
    write_site(site, "An archived document")
    second = run_index([str(site)], cfg)
    assert second.documents_updated == 1 and second.images_embedded == 2
    assert second.ocr_images == 0 and second.ocr_reused == 2
    again = image_rows_by_file_name(cfg)
    assert again["notice.png"]["ocr_text"] == rows["notice.png"]["ocr_text"]
    assert again["notice.png"]["surrogate_text"].startswith("An archived document")
    assert "PAYMENTOVERDUE" in squashed(again["notice.png"]["surrogate_text"])


def test_ocr_opt_out_and_missing_engine(tmp_path, monkeypatch):
    site = write_site(tmp_path / "site", "A scanned document")
    off = make_config(tmp_path / "off", **{"images.ocr": False})
    summary = run_index([str(site)], off)
    rows = image_rows_by_file_name(off)
    assert all(r["ocr_text"] is None and "PAYMENT" not in squashed(r["surrogate_text"]) for r in rows.values())
    assert summary.ocr_images == 0 and "off" in summary.ocr_note and "off" in summary.to_text()

    # Asked for tesseract where there is none: said once in the summary, every image still indexed.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    missing = run_index([str(site)], make_config(tmp_path / "missing", **{"images.ocr_backend": "tesseract"}))
    assert missing.images_ok == 2 and missing.ocr_images == 0 and not missing.failures
    assert "not run" in missing.ocr_note and "tesseract" in missing.ocr_note
    assert "not run" in missing.to_text()
