"""``models list|pull`` and ``classify``, mounted on a throwaway typer app as mmrag.cli mounts them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mmrag.cli.models import classify, models_app
from tests.tiny_checkpoints import png_bytes, save_random_blip2, save_random_clip, textured_images

app = typer.Typer()
app.add_typer(models_app, name="models")
app.command("classify")(classify)
runner = CliRunner()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(textured_images(2)):
        path = folder / f"figure-{i}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    return paths


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_classify_json_gives_probabilities_per_image(clip_dir, image_files):
    args = ["classify", *map(str, image_files), "--labels", "a cat", "--labels", "a diagram", "-l", "a dog"]
    result = runner.invoke(app, [*args, "--model-path", str(clip_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["image"] for row in rows] == [str(p) for p in image_files]
    for row in rows:
        assert set(row) == {"image", "probabilities", "best"}
        assert list(row["probabilities"]) == ["a cat", "a diagram", "a dog"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["best"] == max(row["probabilities"], key=row["probabilities"].get)


def test_classify_probabilities_are_softmax_of_scaled_cosine(clip_dir, image_files):
    from mmrag.config import EmbedConfig
    from mmrag.pipelines.clip_embedder import softmax
    from mmrag.pipelines.embed import create_embedder
    from mmrag.pipelines.images import load_rgb
    from mmrag.config import ImageConfig

    result = runner.invoke(
        app, ["classify", str(image_files[0]), "--labels", "red", "--labels", "blue", "--model-path", str(clip_dir), "--json"]
    )
    clip = create_embedder(EmbedConfig(name="clip", model_path=str(clip_dir)))
    image = load_rgb(image_files[0].read_bytes(), ImageConfig())
    expected = softmax(clip.logit_scale * clip.embed_texts(["red", "blue"]) @ clip.embed_images([image])[0])
    got = json.loads(result.stdout)[0]["probabilities"]
    np.testing.assert_allclose([got["red"], got["blue"]], expected, atol=1e-5)


def test_classify_table_lists_each_image_with_label_columns(clip_dir, image_files):
    result = runner.invoke(
        app, ["classify", *map(str, image_files), "--labels", "cat", "--labels", "dog", "--model-path", str(clip_dir)]
    )
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["image", "cat", "dog", "best"]
    assert len(rows) == 2 and rows[0].startswith(str(image_files[0]))
    for row in rows:
        *_, cat, dog, best = row.split()
        assert float(cat) + float(dog) == pytest.approx(1.0, abs=2e-3)  # printed probabilities, rounded
        assert best == ("cat" if float(cat) >= float(dog) else "dog")


def test_classify_reports_each_bad_image_on_one_line_and_exits_1(clip_dir, image_files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    html = tmp_path / "page.jpg"
    html.write_text("<html><body>Not found</body></html>")
    missing = tmp_path / "missing.png"
    result = runner.invoke(
        app,
        ["classify", str(image_files[0]), str(broken), str(html), str(missing),
         "--labels", "cat", "--labels", "dog", "--model-path", str(clip_dir), "--json"],
    )
    assert result.exit_code == 1
    assert [row["image"] for row in json.loads(result.stdout)] == [str(image_files[0])]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3
    assert errors[0].startswith(f"mmrag: error: {broken}: corrupt")
    assert errors[1].startswith(f"mmrag: error: {html}: unsupported: not an image")
    assert errors[2] == f"mmrag: error: {missing}: No such file or directory"


def test_classify_with_blip2_uses_its_checkpoint(tmp_path, image_files):
    blip2_dir = save_random_blip2(tmp_path / "blip2")
    result = runner.invoke(
        app,
        ["classify", str(image_files[0]), "--labels", "cat", "--labels", "dog",
         "--embedder", "blip2", "--model-path", str(blip2_dir), "--template", "a photo of a {}", "--json"],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert set(row["probabilities"]) == {"cat", "dog"} and sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert row["best"] == max(row["probabilities"], key=row["probabilities"].get)


def test_classify_without_weights_fails_with_how_to_provide_them(image_files, empty_hf_cache):
    result = runner.invoke(app, ["classify", str(image_files[0]), "--labels", "cat"])
    assert result.exit_code == 2
    assert "mmrag models pull clip --out DIR" in result.stderr


def test_classify_refuses_a_text_only_embedder(image_files):
    result = runner.invoke(app, ["classify", str(image_files[0]), "--labels", "cat", "--embedder", "minilm"])
    assert result.exit_code == 2
    assert "embeds no images" in result.stderr


def test_models_list_json_says_which_weights_are_present(clip_dir, empty_hf_cache):
    snapshot = empty_hf_cache / "models--openai--clip-vit-base-patch16" / "snapshots" / ("a" * 40)
    shutil.copytree(clip_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"clip", "blip2", "minilm"} <= set(rows)
    assert rows["clip"]["present"] and rows["clip"]["path"] == str(snapshot)
    assert rows["clip"]["size_bytes"] == sum(p.stat().st_size for p in clip_dir.iterdir())
    assert rows["clip"]["modalities"] == ["image", "text"]
    assert not rows["blip2"]["present"] and rows["blip2"]["checkpoint"] == "Salesforce/blip2-itm-vit-g"
    assert rows["blip2"]["size_bytes"] is None
    assert rows["minilm"]["present"] and rows["minilm"]["size_bytes"] > 1_000_000


def test_models_list_table(empty_hf_cache):
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "modalities", "weights", "size"]
    clip_line = next(line for line in lines if line.startswith("clip"))
    assert "missing" in clip_line and "openai/clip-vit-base-patch16 (not downloaded)" in clip_line


@pytest.mark.parametrize("offline_mode", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_models_pull_without_network_fails_fast_with_a_clear_message(tmp_path, monkeypatch, offline_mode):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_mode)
    start = time.monotonic()
    result = runner.invoke(app, ["models", "pull", "clip", "--out", str(tmp_path / "clip")])
    assert time.monotonic() - start < 10
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message
    assert message.startswith("mmrag: error: could not download openai/clip-vit-base-patch16 for embedder 'clip'")
    assert "on a machine with network" in message and "--model-path DIR" in message


def test_models_pull_unknown_embedder(tmp_path):
    result = runner.invoke(app, ["models", "pull", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no known checkpoint for embedder 'nope'" in result.stderr
