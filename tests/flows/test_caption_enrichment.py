"""Caption enrichment in the ``index`` flow: a vision model (Ollama's real ``/api/chat`` wire protocol,
served by the loopback fake in tests/fake_llm_server.py) captions images the page leaves uncaptioned;
the caption is stored with its provenance, joins the text surrogate marked as generated, and is never
asked for twice. Real Prefect, LanceDB and MiniLM; OCR off (tests/conftest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmrag.flows.index import run_index
from mmrag.cli import app
from mmrag.config import ConfigError, load_config
from mmrag.records import sha256_hex
from mmrag.pipelines import store
from mmrag.pipelines.generate import build_prompt, sources_of
from mmrag.pipelines.store import IMAGE_CAPTIONS
from mmrag.pipelines.retrieve import Searcher
from tests.fake_llm_server import FakeModel, decoded_images, serve_fake_llm, unused_port
from tests.helpers import image_rows_by_file_name

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

REPLY = "A bar chart of monthly rainfall totals."
CAPTION = REPLY + " I saw 1 image(s)."  # the fake server names the images it was sent


def png(color: tuple[int, int, int], size=(64, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def write_site(root: Path) -> Path:
    """One page: a figure with an authored caption, and a bare image with no caption, alt or title."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "authored.png").write_bytes(png((20, 120, 40)))
    (root / "plain.png").write_bytes(png((200, 30, 30)))
    (root / "rain.html").write_text(
        "<html><head><title>Rain</title></head><body><article><h1>Rainfall</h1>"
        "<p>Monthly rainfall in the valley was recorded over ten years by the weather station.</p>"
        '<figure><img src="authored.png"><figcaption>Station map of the valley</figcaption></figure>'
        '<p>The chart below shows the totals per month for each year of the record.</p><img src="plain.png">'
        "</article></body></html>", encoding="utf-8")
    return root


def make_config(tmp_path: Path, host: str, **overrides):
    values = {"store.db_uri": str(tmp_path / "db"), "store.raw_dir": str(tmp_path / "raw"), "progress": False,
              "images.ocr": False, "images.caption_missing": True, "images.caption_llm": "ollama:llava",
              "llm.ollama_host": host}
    values.update(overrides)
    return load_config(None, values)


def test_uncaptioned_image_gets_a_generated_caption_once(tmp_path, minilm):
    site = write_site(tmp_path / "site")
    plain = (site / "plain.png").read_bytes()
    with serve_fake_llm({"llava": FakeModel(reply=REPLY, vision=True)}) as server:
        cfg = make_config(tmp_path, server.url)
        first = run_index([str(site)], cfg)

        # Only the uncaptioned image was sent, as base64 in the message's `images`, with the configured prompt.
        (request,) = server.chat_requests("/api/chat")
        (message,) = request.body["messages"]
        assert message["content"] == cfg.images.caption_prompt and decoded_images(message) == [plain]
        assert request.body["model"] == "llava"
        assert first.images_ok == 2 and not first.failures
        assert (first.captions_generated, first.captions_reused, first.captions_failed) == (1, 0, 0)
        assert first.caption_model == "ollama:llava" and first.caption_seconds_per_image is not None
        assert "1 generated with ollama:llava" in first.to_text() and "s/image" in first.to_markdown()

        # Provenance in the side table: image content, model, prompt, time.
        (caption_row,) = store.IndexStore(cfg.store.db_uri).open_table(IMAGE_CAPTIONS).to_arrow().to_pylist()
        assert caption_row["image_sha256"] == sha256_hex(plain) and caption_row["caption"] == CAPTION
        assert (caption_row["backend"], caption_row["model"], caption_row["prompt"]) == ("ollama", "llava", cfg.images.caption_prompt)
        assert caption_row["created_at"] is not None

        # The row keeps the page's (empty) caption; the generated one is apart, and marked in the surrogate.
        rows = image_rows_by_file_name(cfg)
        assert rows["plain.png"]["caption"] == "" and rows["plain.png"]["caption_missing"]
        assert rows["plain.png"]["generated_caption"] == CAPTION
        assert f"Generated caption: {CAPTION}" in rows["plain.png"]["surrogate_text"]
        assert rows["authored.png"]["generated_caption"] is None
        assert "Generated caption" not in rows["authored.png"]["surrogate_text"]
        hits = Searcher(cfg, embedder=minilm).search("rainfall bar chart", target="images", mode="cosine", k=2).hits
        assert hits[0].src_url.endswith("plain.png")
        assert (hits[0].text, hits[0].generated_caption) == ("", CAPTION)
        assert (hits[1].text, hits[1].generated_caption) == ("Station map of the valley", None)
        assert hits[0].to_dict()["generated_caption"] == CAPTION

        # The answer prompt and the sources show the generated caption, marked, where no authored one exists.
        prompt = build_prompt("What does the chart show?", hits)
        assert f"**Image Caption (generated):** {CAPTION}\n" in prompt
        assert "**Image Caption:** Station map of the valley\n" in prompt
        assert [s.snippet for s in sources_of(hits)] == [f"(generated) {CAPTION}", "Station map of the valley"]

        # Derived caption→image labels see only the authored caption.
        from mmrag.eval.derive import derive_caption_entries

        entries = derive_caption_entries(list(rows.values()), [rows["plain.png"]["doc_url"]])
        assert [e.query for e in entries] == ["Station map of the valley"]

        # Rerun: nothing asked, nothing embedded; a re-parse of every page reuses the stored caption.
        again = run_index([str(site)], cfg)
        reparsed = run_index([str(site)], make_config(tmp_path, server.url, **{"fetch.reparse_from_raw": True}))
        assert len(server.chat_requests("/api/chat")) == 1
    assert again.images_embedded == 0 and again.captions_generated == 0
    assert reparsed.images_ok == 2 and reparsed.images_embedded == 0
    assert (reparsed.captions_generated, reparsed.captions_reused) == (0, 1)
    assert image_rows_by_file_name(cfg)["plain.png"]["generated_caption"] == CAPTION

    # Another prompt is another caption (reuse is by image, model and prompt).
    with serve_fake_llm({"llava": FakeModel(reply="Red rectangle.", vision=True)}) as server:
        other = run_index([str(site)], make_config(tmp_path, server.url, **{"fetch.reparse_from_raw": True,
                                                                           "images.caption_prompt": "Caption it."}))
        assert len(server.chat_requests("/api/chat")) == 1
    assert other.captions_generated == 1 and other.images_embedded == 1
    assert image_rows_by_file_name(cfg)["plain.png"]["generated_caption"] == "Red rectangle. I saw 1 image(s)."


def test_backend_that_cannot_caption_leaves_the_run_going(tmp_path):
    site = write_site(tmp_path / "site")

    # Nothing listens: one note, the image indexed without a generated caption.
    down_cfg = make_config(tmp_path / "down", f"http://127.0.0.1:{unused_port()}")
    down = run_index([str(site)], down_cfg)
    assert down.pages_ok == 1 and down.images_ok == 2 and down.exit_code(strict=False) == 0
    assert down.captions_generated == 0 and down.captions_failed == 1
    assert "cannot reach Ollama" in down.caption_note and "cannot reach Ollama" in down.to_text()
    rows = image_rows_by_file_name(down_cfg)
    assert rows["plain.png"]["generated_caption"] is None and "Generated caption" not in rows["plain.png"]["surrogate_text"]
    assert not store.IndexStore(down_cfg.store.db_uri).has_table(IMAGE_CAPTIONS)

    with serve_fake_llm({"qwen2.5": FakeModel(), "tiny-ctx": FakeModel(vision=True, context_words=3)}) as server:
        # A text-only model (per /api/show): no image is sent.
        text_only = run_index([str(site)], make_config(tmp_path / "text", server.url, **{"images.caption_llm": "ollama:qwen2.5"}))
        assert server.chat_requests("/api/chat") == []
        assert "does not accept images" in text_only.caption_note and text_only.captions_failed == 1
        # A per-image failure (the prompt overflows the model's context) is one recorded failure.
        overflow = run_index([str(site)], make_config(tmp_path / "ctx", server.url, **{"images.caption_llm": "ollama:tiny-ctx"}))
    assert overflow.images_ok == 2 and overflow.captions_failed == 1 and overflow.caption_note == ""
    (failure,) = overflow.failures
    assert failure["status"] == "caption_error" and failure["url"].endswith("plain.png") and "context" in failure["error"]


def test_text_only_llamacpp_is_refused_at_config(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"images.caption_llm": "llamacpp:qwen2.5-coder-0.5b"})
    message = str(err.value)
    assert "images.caption_llm" in message and "text-only" in message and "ollama:" in message and "openai:" in message

    result = CliRunner().invoke(app, ["index", str(write_site(tmp_path / "site")), "--db", str(tmp_path / "db"),
                                      "--caption-missing", "llamacpp"])
    assert result.exit_code == 2 and "text-only" in result.output and "ollama:" in result.output
    assert not (tmp_path / "db").exists()


def test_index_cli_flags(tmp_path, monkeypatch):
    site = write_site(tmp_path / "site")
    monkeypatch.setenv("MMRAG_STORE__RAW_DIR", str(tmp_path / "raw"))
    with serve_fake_llm({"llava": FakeModel(reply=REPLY, vision=True)}) as server:
        monkeypatch.setenv("MMRAG_LLM__OLLAMA_HOST", server.url)
        result = CliRunner().invoke(app, ["index", str(site), "--db", str(tmp_path / "db"), "--json", "--no-ocr",
                                          "--caption-missing", "ollama:llava"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["captions_generated"] == 1 and summary["caption_model"] == "ollama:llava"
        assert summary["ocr_note"].startswith("off") and len(server.chat_requests("/api/chat")) == 1
