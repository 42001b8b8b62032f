"""OCR of figure images: the words printed in a diagram or table, for an image's text surrogate.

Two engines that work offline, tried in this order by ``backend="auto"``:

* ``rapidocr`` — PyPI ``rapidocr-onnxruntime`` (PP-OCRv4 detection + recognition in ONNX; the
  models ship inside the wheel). Reads diagram labels, rotated and sparse text well.
* ``tesseract`` — Debian ``tesseract-ocr`` (English data in ``tesseract-ocr-eng``), run as a
  subprocess in sparse-text mode (``--psm 11``). Good on tables and running text, but misses
  most labels inside diagrams.

Measured on 7 colah.github.io figures (tables, diagrams; 500–2200 px wide), 2 shared CPU cores:
tesseract 0.1–2.4 s per figure (mean 0.9 s); rapidocr 1–6.6 s (mean 4.3 s) with its default
detection size, about 40 % less with the 960 px limit used here. Both read the tables exactly
(``Mikolov-AnalogyTable``: "France - Paris | Italy: Rome | Japan: Tokyo …"); on diagrams only
rapidocr finds the labels (``LSTM3-chain``: "ht-1 | tanh | A | A | tanh | Xt-1 | Xt | Xt+1",
``LSTM2-notation``: "Neural Network | Pointwise | Vector | Concatenate | Copy …";
tesseract: "pth", and nothing on ``Bottou-WordSetup`` where rapidocr reads "cat sat song the mat").

:func:`ocr_available` says whether an engine is installed; :func:`ocr_image` raises
:class:`OcrUnavailable` with the install command when none is.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import threading
from typing import TYPE_CHECKING, Literal

from mmrag.config import ImageConfig
from mmrag.pipelines.images import load_rgb

if TYPE_CHECKING:
    from PIL import Image

OcrBackend = Literal["auto", "rapidocr", "tesseract"]

INSTALL_HINT = (
    "install rapidocr-onnxruntime (pip install rapidocr-onnxruntime; its models ship in the wheel) "
    "or Debian's tesseract-ocr (apt-get install tesseract-ocr)"
)
TESSERACT_TIMEOUT_S = 120.0


class OcrUnavailable(RuntimeError):
    """No OCR engine (or not the one asked for) is installed; the message says how to install one."""


def _rapidocr_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


def _tesseract_installed() -> bool:
    return shutil.which("tesseract") is not None


def ocr_backends() -> list[str]:
    """The OCR engines installed here, preferred first."""
    found = []
    if _rapidocr_installed():
        found.append("rapidocr")
    if _tesseract_installed():
        found.append("tesseract")
    return found


def ocr_available(backend: OcrBackend = "auto") -> bool:
    """True when ``backend`` (any engine, for ``auto``) is installed."""
    installed = ocr_backends()
    return bool(installed) if backend == "auto" else backend in installed


def resolve_backend(backend: OcrBackend = "auto") -> str:
    """The engine ``ocr_image`` will use; raises :class:`OcrUnavailable` naming what to install."""
    installed = ocr_backends()
    if backend == "auto":
        if not installed:
            raise OcrUnavailable(f"no OCR engine installed: {INSTALL_HINT}")
        return installed[0]
    if backend not in ("rapidocr", "tesseract"):
        raise ValueError(f"unknown OCR backend {backend!r}; use auto, rapidocr or tesseract")
    if backend not in installed:
        hint = (
            "pip install rapidocr-onnxruntime"
            if backend == "rapidocr"
            else "apt-get install tesseract-ocr (the `tesseract` program must be on PATH)"
        )
        raise OcrUnavailable(f"OCR backend {backend!r} is not installed: {hint}")
    return backend


def ocr_image(
    image: bytes | Image.Image,
    *,
    backend: OcrBackend = "auto",
    image_cfg: ImageConfig | None = None,
) -> str:
    """The text found in ``image`` (encoded bytes or a PIL image), one detected line per line; ``""`` when none.

    Bytes are decoded like every other image stage (``load_rgb``: EXIF orientation, transparency
    over white, SVG rasterised) and raise ``ValueError`` when they do not decode.
    """
    engine = resolve_backend(backend)
    if isinstance(image, (bytes, bytearray, memoryview)):
        rgb = load_rgb(bytes(image), image_cfg or ImageConfig())
    else:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    lines = _rapidocr_lines(rgb) if engine == "rapidocr" else _tesseract_lines(rgb)
    return "\n".join(" ".join(line.split()) for line in lines if line.strip())


@functools.lru_cache(maxsize=1)
def _rapidocr_engine():
    from rapidocr_onnxruntime import RapidOCR

    # Detection on the image scaled to at most 960 px a side (PaddleOCR's own default). rapidocr's
    # default scales the *short* side up to 736 px, which makes wide figures 4× larger and ~2× slower
    # for no text gained on the colah figures.
    return RapidOCR(det_limit_type="max", det_limit_side_len=960)


_rapidocr_lock = threading.Lock()


def _rapidocr_lines(rgb: Image.Image) -> list[str]:
    with _rapidocr_lock:  # one engine, its pre/post-processing keeps per-call state
        result, _elapsed = _rapidocr_engine()(rgb)
    return [text for _box, text, _score in result or []]


def _tesseract_lines(rgb: Image.Image) -> list[str]:
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    try:
        done = subprocess.run(
            ["tesseract", "stdin", "stdout", "--psm", "11", "-l", "eng"],
            input=png.getvalue(),
            capture_output=True,
            timeout=TESSERACT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise OcrUnavailable(f"OCR backend 'tesseract' is not installed: {INSTALL_HINT}") from exc
    if done.returncode != 0:
        message = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"tesseract failed (exit {done.returncode}): {message}")
    return done.stdout.decode("utf-8", "replace").splitlines()
