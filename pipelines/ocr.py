"""OCR of figure images: the words printed in a diagram or table, for an image's text surrogate.

Two engines that work offline, tried in this order by ``backend="auto"``:

* ``rapidocr`` — PyPI ``rapidocr-onnxruntime`` (PP-OCRv4 detection + recognition in ONNX; the
  models ship inside the wheel). Reads diagram labels, rotated and sparse text well.
* ``tesseract`` — Debian ``tesseract-ocr`` (English data in ``tesseract-ocr-eng``), run as a
  subprocess in sparse-text mode (``--psm 11``). Good on tables and running text, but misses
  most labels inside diagrams.

Measured on 7 colah.github.io figures (tables, diagrams; 500–2200 px wide), 2 shared CPU cores:
tesseract 0.1–2.4 s per figure (mean 0.9 s); rapidocr 1–6.6 s (mean 4.3 s) with its default
detection size (``limit_type: min`` upscales the short side to 736 px). Both read the tables exactly
(``Mikolov-AnalogyTable``: "France - Paris | Italy: Rome | Japan: Tokyo …"); on diagrams only
rapidocr finds the labels (``LSTM3-chain``: "ht-1 | tanh | A | A | tanh | Xt-1 | Xt | Xt+1",
``LSTM2-notation``: "Neural Network | Pointwise | Vector | Concatenate | Copy …";
tesseract: "pth", and nothing on ``Bottou-WordSetup`` where rapidocr reads "cat sat song the mat").

Cost (issue #15, the 175 distinct figures of the 14 colah posts, CPU seconds of one engine thread,
machine shared and loaded): recognition is two thirds of rapidocr's time, because every batch of
text boxes is padded to at least 320 px at 48 px high and most diagram labels are short. The
defaults pad to 160 (``images.ocr_rec_width``) and skip the 180° classifier (``ocr_angle_cls``):
97 CPU s instead of 223 s for the settings before (engine threads on every core, classifier on,
320), 0.953 of their words found. Scaling detection to 960 px (``ocr_max_side``) saves another
quarter (71 CPU s) but found only 0.885 of the words (small labels of wide figures), so it is off. An image where the
detector finds no box skips recognition (rapidocr does). Reading runs in ``images.ocr_workers``
processes of one engine thread each (:class:`OcrPool`), beside embedding.

:func:`ocr_available` says whether an engine is installed; :func:`ocr_image` raises
:class:`OcrUnavailable` with the install command when none is.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import io
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
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
    lines = _rapidocr_lines(rgb, image_cfg) if engine == "rapidocr" else _tesseract_lines(rgb)
    return "\n".join(" ".join(line.split()) for line in lines if line.strip())


@functools.lru_cache(maxsize=4)
def _rapidocr_engine(max_side: int, angle_cls: bool, rec_width: int, threads: int):
    from rapidocr_onnxruntime import RapidOCR  # deferred: optional engine, loads onnxruntime and its models
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess  # deferred: as above

    engine = RapidOCR(det_limit_type="max", det_limit_side_len=max_side or 960, use_cls=angle_cls,
                      rec_img_shape=[3, 48, rec_width], intra_op_num_threads=threads if threads > 0 else -1,
                      inter_op_num_threads=1 if threads > 0 else -1)
    # rapidocr 1.4 ignores det_limit_side_len with limit_type "max" (it detects at up to 960, 1500 or 2000 px by
    # the image's size): scale to at most ``max_side`` a side for detection here. Recognition still reads each
    # box from the image at full size.
    detector = engine.text_det
    if max_side and hasattr(detector, "get_preprocess"):
        detector.get_preprocess = lambda _longest: DetPreProcess(max_side, "max", detector.mean, detector.std)
    return engine


_rapidocr_lock = threading.Lock()


def _rapidocr_lines(rgb: Image.Image, image_cfg: ImageConfig | None = None) -> list[str]:
    cfg = image_cfg or ImageConfig()
    engine = _rapidocr_engine(cfg.ocr_max_side, cfg.ocr_angle_cls, cfg.ocr_rec_width, _THREADS)
    with _rapidocr_lock:  # one engine, its pre/post-processing keeps per-call state
        result, _elapsed = engine(rgb)  # no text box found: None, and recognition is skipped
    return [text for _box, text, _score in result or []]


def engine_key(backend: str, image_cfg: ImageConfig | None = None) -> str:
    """What an OCR result depends on besides the image: engine, its version and the settings that change its text.

    The key of stored OCR results (``ocr_results``): a result is reused only under the same key.
    """
    cfg = image_cfg or ImageConfig()
    if backend == "rapidocr":
        return (f"rapidocr-onnxruntime {importlib.metadata.version('rapidocr-onnxruntime')} det-max{cfg.ocr_max_side} "
                f"cls{int(cfg.ocr_angle_cls)} rec-w{cfg.ocr_rec_width}")
    return "tesseract psm11 eng"


# -- a pool of OCR processes -----------------------------------------------------------------

_THREADS = 0  # intra-op threads of this process's engine (0: the engine's default, every core)


def _init_worker(threads: int) -> None:
    global _THREADS
    _THREADS = threads


def read_text(data: bytes, backend: str, image_cfg: ImageConfig) -> tuple[str | None, str | None, float]:
    """OCR of one encoded image: ``(text, None, seconds)``, or ``(None, error, seconds)`` when it does not decode
    or the engine fails (one bad image costs only itself)."""
    started = time.perf_counter()
    try:
        text = ocr_image(data, backend=backend, image_cfg=image_cfg)
    except (ValueError, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {exc}", round(time.perf_counter() - started, 4)
    return text, None, round(time.perf_counter() - started, 4)


def default_ocr_workers() -> int:
    """OCR processes when ``images.ocr_workers`` is not set: one per core (they share the cores with
    embedding; each runs one thread, so none spins while another stage computes)."""
    return max(1, os.cpu_count() or 1)


class OcrPool:
    """Reads images in ``workers`` processes (spawned: the parent runs threads), one engine thread each;
    ``workers=0`` reads in this process, in the caller's thread. :meth:`submit` returns a future of
    :func:`read_text`'s result."""

    def __init__(self, backend: str, image_cfg: ImageConfig, workers: int):
        self.backend, self.image_cfg, self.workers = backend, image_cfg, workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(1,))

    def submit(self, data: bytes) -> Future:
        """Start reading one image."""
        if self._pool is not None:
            return self._pool.submit(read_text, data, self.backend, self.image_cfg)
        future: Future = Future()
        future.set_result(read_text(data, self.backend, self.image_cfg))
        return future

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (``cancel``: drop images not started yet)."""
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None


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
