"""OCR of generated images with whichever engines are installed, and the error when none is."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from mmrag.pipelines import ocr
from mmrag.pipelines.ocr import OcrUnavailable, ocr_available, ocr_backends, ocr_image
from tests.tiny_checkpoints import png_bytes


def words_image(text: str) -> Image.Image:
    font = ImageFont.load_default(size=52)
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right - left + 60, bottom - top + 60), "white")
    ImageDraw.Draw(image).text((30 - left, 30 - top), text, fill="black", font=font)
    return image


@pytest.mark.parametrize("backend", ["rapidocr", "tesseract"])
def test_reads_printed_words(backend):
    if not ocr_available(backend):
        pytest.skip(f"OCR backend {backend} is not installed")
    text = ocr_image(png_bytes(words_image("HELLO WORLD")), backend=backend)
    assert "HELLOWORLD" in text.upper().replace(" ", "")  # PP-OCR sometimes drops the space between words


def test_auto_prefers_rapidocr_and_reads_a_pil_image():
    if not ocr_available():
        pytest.skip("no OCR engine installed")
    assert ocr.resolve_backend("auto") == ocr_backends()[0]
    assert "MATRIX" in ocr_image(words_image("MATRIX").convert("RGBA")).upper()


def test_blank_image_gives_empty_text():
    if not ocr_available("tesseract"):
        pytest.skip("tesseract is not installed")
    assert ocr_image(Image.new("RGB", (120, 60), "white"), backend="tesseract") == ""


def test_undecodable_bytes_raise_value_error():
    if not ocr_available():
        pytest.skip("no OCR engine installed")
    with pytest.raises(ValueError, match="corrupt"):
        ocr_image(b"\x89PNG\r\n\x1a\nbroken")


def test_no_engine_gives_the_install_commands(monkeypatch):
    monkeypatch.setattr(ocr, "_rapidocr_installed", lambda: False)
    monkeypatch.setattr(ocr, "_tesseract_installed", lambda: False)
    assert not ocr_available() and ocr_backends() == []
    with pytest.raises(OcrUnavailable, match=r"pip install rapidocr-onnxruntime.*apt-get install tesseract-ocr"):
        ocr_image(words_image("X"))
    with pytest.raises(OcrUnavailable, match=r"'tesseract' is not installed: apt-get install tesseract-ocr"):
        ocr_image(words_image("X"), backend="tesseract")
