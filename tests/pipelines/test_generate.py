"""Prompt building (default and user templates), the multi-image strategies, answers and caption enrichment."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmrag.config import LlmConfig
from mmrag.pipelines.generate import (
    DEFAULT_PROMPT_TEMPLATE,
    IMAGE_CAPTIONS,
    ImageContext,
    PromptTemplateError,
    answer_events,
    build_messages,
    build_prompt,
    enrich_captions,
    generate_with_images,
    generated_captions,
    image_inputs,
    is_single_image_model,
    load_image_blobs,
    load_prompt_template,
    sources_of,
)
from mmrag.pipelines.llm.base import ChatMessage, ImageInput, LlmError, Usage, collect
from mmrag.pipelines.llm.ollama_backend import OllamaBackend
from mmrag.pipelines.retrieve import Hit
from mmrag.pipelines.store import IMAGE_BLOBS, IndexStore, image_blobs_schema, images_schema
from tests.fake_llm_server import FakeModel, decoded_images, serve_fake_llm
from tests.tiny_checkpoints import png_bytes


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    return png_bytes(Image.new("RGB", (8, 8), color))


def text_hit(rank: int, text: str, score: float = 0.5, section: str = "Intro") -> Hit:
    return Hit(target="text", id=f"t{rank}", score=score, rank=rank, similarity=score, retrieval_score=score,
               doc_url="https://blog.example/lstm", article_title="Understanding LSTMs", section=section, text=text)


def image_hit(rank: int, caption: str, sha: str, score: float = 0.4) -> Hit:
    return Hit(target="image", id=f"i{rank}", score=score, rank=rank, similarity=score, retrieval_score=score,
               doc_url="https://blog.example/lstm", article_title="Understanding LSTMs", section="Diagrams", text=caption,
               src_url=f"https://blog.example/img/{sha}.png", image_sha256=sha, image_status="ok")


HITS = [
    text_hit(1, "LSTMs have a cell state.", 0.9),
    text_hit(2, "Gates regulate information.", 0.7, section="The Core Idea"),
    image_hit(1, "An LSTM cell with three gates", "aaa", 0.35),
    image_hit(2, "", "bbb", 0.6),
]


# -- prompt ---------------------------------------------------------------------------------------


def test_default_prompt_mirrors_the_original_design():
    prompt = build_prompt("What is an LSTM?", HITS)
    expected = (
        'Given the query "What is an LSTM?" and the following relevant snippets:\n\n'
        "**Article title:** Understanding LSTMs\n**Section:**  Intro\n**Snippet:** LSTMs have a cell state.\n\n"
        "**Article title:** Understanding LSTMs\n**Section:**  The Core Idea\n**Snippet:** Gates regulate information.\n\n"
        "**Image Path:**  https://blog.example/img/aaa.png\n**Image Caption:** An LSTM cell with three gates\n\n"
        "**Image Path:**  https://blog.example/img/bbb.png\n**Image Caption:**\n\n"
        "Please provide a concise and accurate answer to the query, incorporating relevant information "
        "from the provided snippets where possible."
    )
    assert prompt == expected


def test_generated_captions_reach_the_prompt_marked_only_where_no_authored_caption_exists():
    import dataclasses

    authored = dataclasses.replace(HITS[2], generated_caption="ignored: the page's caption wins")
    generated = dataclasses.replace(HITS[3], generated_caption="A diagram of a forget gate.", published="2015-08-27")
    prompt = build_prompt("What is an LSTM?", [authored, generated])
    assert "**Image Caption:** An LSTM cell with three gates\n" in prompt and "ignored" not in prompt
    assert "**Image Path:**  https://blog.example/img/bbb.png\n**Image Caption (generated):** A diagram of a forget gate.\n" in prompt
    # text-only models read the same caption, marked, through ImageInput.caption
    (image,) = image_inputs([generated], {"bbb": (b"png", "image/png")}, None, limit=4)
    assert image.caption == "(generated) A diagram of a forget gate."
    (source,) = sources_of([generated])
    assert (source.snippet, source.to_dict()["published"]) == ("(generated) A diagram of a forget gate.", "2015-08-27")
    assert "2015-08-27" not in prompt  # the default template, like the design's, shows no dates


def test_prompt_is_plain_text_not_html_escaped():
    prompt = build_prompt('Is a<b & "c"?', [text_hit(1, "x < y && y > z")])
    assert 'query "Is a<b & "c"?"' in prompt and "x < y && y > z" in prompt and "&lt;" not in prompt


def test_query_image_with_ocr_text_is_rendered():
    prompt = build_prompt("What does this say?", [], query_image=ImageContext(path="q.png", caption="", ocr_text="STOP"))
    assert "**Query image:**  q.png" in prompt and "**Text in image:** STOP" in prompt


def test_user_template_sees_hits_and_question(tmp_path):
    path = tmp_path / "mine.j2"
    path.write_text("Q: {{ question }}\n{% for h in text_hits %}- [{{ loop.index }}] {{ h.text }} ({{ h.doc_url }}, {{ '%.1f' % h.score }})\n{% endfor %}"
                    "{% for i in image_hits %}* {{ i.caption or 'no caption' }} attached={{ i.attached }}\n{% endfor %}", encoding="utf-8")
    prompt = build_prompt("why?", HITS, load_prompt_template(path), attached_sha256={"bbb"})
    assert prompt.splitlines() == [
        "Q: why?",
        "- [1] LSTMs have a cell state. (https://blog.example/lstm, 0.9)",
        "- [2] Gates regulate information. (https://blog.example/lstm, 0.7)",
        "* An LSTM cell with three gates attached=False",
        "* no caption attached=True",
    ]


def test_template_errors_are_one_line_and_name_the_file(tmp_path):
    bad = tmp_path / "bad.j2"
    bad.write_text("line one\n{% for h in text_hits %}unclosed", encoding="utf-8")
    with pytest.raises(PromptTemplateError, match=r"bad\.j2, line 2"):
        load_prompt_template(bad)
    with pytest.raises(PromptTemplateError, match="cannot read"):
        load_prompt_template(tmp_path / "missing.j2")
    typo = tmp_path / "typo.j2"
    typo.write_text("{{ questoin }}", encoding="utf-8")
    with pytest.raises(PromptTemplateError, match="questoin"):
        build_prompt("q", [], load_prompt_template(typo))


def test_template_runs_sandboxed(tmp_path):
    evil = tmp_path / "evil.j2"
    evil.write_text("{{ question.__class__.__mro__[1].__subclasses__() }}", encoding="utf-8")
    with pytest.raises(PromptTemplateError):
        build_prompt("q", [], load_prompt_template(evil))


def test_messages_and_sources():
    assert build_messages("p") == [ChatMessage("user", "p")]
    assert build_messages("p", "sys") == [ChatMessage("system", "sys"), ChatMessage("user", "p")]
    sources = sources_of(HITS)
    assert [(s.rank, s.target, s.section) for s in sources] == [(1, "text", "Intro"), (2, "text", "The Core Idea"),
                                                               (3, "image", "Diagrams"), (4, "image", "Diagrams")]
    assert sources[2].image_path == "https://blog.example/img/aaa.png" and sources[2].image_sha256 == "aaa"
    assert sources[0].image_path is None and sources[2].snippet == "An LSTM cell with three gates"


def test_image_inputs_put_the_query_image_first_then_hits_by_score():
    blobs = {"aaa": (b"A", "image/png"), "bbb": (b"B", "image/jpeg")}
    query = ImageInput(b"Q", label="q.png")
    images = image_inputs(HITS, blobs, query, limit=3)
    assert [i.data for i in images] == [b"Q", b"B", b"A"]
    assert images[1].sha256 == "bbb" and images[1].mime_type == "image/jpeg"
    assert [i.data for i in image_inputs(HITS, {"aaa": (b"A", "image/png")}, None, limit=3)] == [b"A"]
    assert len(image_inputs(HITS, blobs, query, limit=2)) == 2


def test_single_image_models_match_on_the_base_name():
    assert is_single_image_model("llama3.2-vision:11b", ["llama3.2-vision"])
    assert is_single_image_model("library/llama3.2-vision", ["llama3.2-vision"])
    assert not is_single_image_model("llava:13b", ["llama3.2-vision"])


# -- multi-image strategies against a real Ollama wire protocol ----------------------------------------


@pytest.fixture()
def fake():
    models = {"llama3.2-vision": FakeModel(reply="Partial.", vision=True, single_image=True),
              "llava": FakeModel(vision=True), "qwen2.5": FakeModel(reply="Text answer.")}
    with serve_fake_llm(models) as server:
        yield server


IMAGES = [ImageInput(_png((255, 0, 0)), label="red.png"), ImageInput(_png((0, 255, 0)), label="green.png"),
          ImageInput(_png((0, 0, 255)), label="blue.png")]
MESSAGES = [ChatMessage("user", "Which colours?")]


def test_best_strategy_sends_only_the_first_image_to_llama32_vision(fake):
    backend = OllamaBackend("llama3.2-vision", fake.url)
    done = collect(generate_with_images(backend, MESSAGES, IMAGES, question="Which colours?", config=LlmConfig(multi_image_strategy="best")))
    assert done.text == "Partial. I saw 1 image(s)."
    (request,) = fake.chat_requests("/api/chat")
    assert decoded_images(request.body["messages"][-1]) == [IMAGES[0].data]


def test_per_image_strategy_asks_once_per_image_then_merges(fake):
    backend = OllamaBackend("llama3.2-vision", fake.url)
    events = list(generate_with_images(backend, MESSAGES, IMAGES, question="Which colours?",
                                       config=LlmConfig(multi_image_strategy="per_image")))
    requests = fake.chat_requests("/api/chat")
    assert len(requests) == 4
    for request, image in zip(requests[:3], IMAGES, strict=True):
        assert request.body["stream"] is False
        assert all(len(m.get("images") or []) <= 1 for m in request.body["messages"])  # one image per message
        assert decoded_images(request.body["messages"][-1]) == [image.data]
    merge = requests[3].body
    assert merge["stream"] is True and "images" not in merge["messages"][-1]
    assert "Answer using image 2 (green.png):** Partial. I saw 1 image(s)." in merge["messages"][-1]["content"]
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.calls == 4 and usage.completion_tokens == 4 * 1 + 3 * 4


def test_multi_image_models_get_all_images_in_one_message(fake):
    collect(generate_with_images(OllamaBackend("llava", fake.url), MESSAGES, IMAGES, question="q", config=LlmConfig()))
    (request,) = fake.chat_requests("/api/chat")
    assert len(decoded_images(request.body["messages"][-1])) == 3


def test_text_only_models_get_images_as_words(fake):
    images = [ImageInput(b"x", label="fig.png", caption="A chart", ocr_text="Total 42")]
    collect(generate_with_images(OllamaBackend("qwen2.5", fake.url), MESSAGES, images, question="q", config=LlmConfig()))
    sent = fake.chat_requests("/api/chat")[-1].body["messages"][-1]
    assert "images" not in sent
    assert sent["content"] == "Which colours?\n\n[Image 1] fig.png\nCaption: A chart\nText in the image: Total 42"


def test_answer_events_attach_image_hit_bytes_for_vision_models(fake):
    blobs = {"aaa": (_png((1, 2, 3)), "image/png"), "bbb": (_png((4, 5, 6)), "image/png")}
    prompt, events = answer_events("What is an LSTM?", HITS, OllamaBackend("llava", fake.url), LlmConfig(max_images=1), blobs=blobs)
    assert prompt.startswith('Given the query "What is an LSTM?"')
    assert collect(events).text.endswith("I saw 1 image(s).")
    user = fake.chat_requests("/api/chat")[-1].body["messages"][-1]
    assert decoded_images(user) == [blobs["bbb"][0]]  # the best-scored image hit


def test_answer_events_send_no_bytes_to_text_models(fake):
    blobs = {"aaa": (b"A", "image/png")}
    _, events = answer_events("What is an LSTM?", HITS, OllamaBackend("qwen2.5", fake.url), LlmConfig(), blobs=blobs)
    assert collect(events).text == "Text answer."
    assert "images" not in fake.chat_requests("/api/chat")[-1].body["messages"][-1]


# -- caption enrichment -----------------------------------------------------------------------------


def _image_rows(rows: list[dict]) -> pa.Table:
    schema = images_schema(2)
    full = [{**{name: None for name in schema.names}, **row} for row in rows]
    return pa.Table.from_pylist(full, schema=schema)


@pytest.fixture()
def store_with_images(tmp_path):
    store = IndexStore(str(tmp_path / "db"))
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    store.upsert("images__minilm", _image_rows([
        {"id": "1", "doc_url": "u", "image_sha256": "red", "caption": "", "caption_missing": True, "status": "ok", "vector": [0.0, 1.0]},
        {"id": "2", "doc_url": "v", "image_sha256": "red", "caption": "", "caption_missing": True, "status": "ok", "vector": [0.0, 1.0]},
        {"id": "3", "doc_url": "u", "image_sha256": "blue", "caption": "Blue", "caption_missing": False, "status": "ok", "vector": [1.0, 0.0]},
        {"id": "4", "doc_url": "u", "image_sha256": "gone", "caption": "", "caption_missing": True, "status": "ok", "vector": [1.0, 0.0]},
    ]))
    blob_rows = [{"sha256": "red", "format": "PNG", "is_raster": True, "data": red},
                 {"sha256": "blue", "format": "PNG", "is_raster": True, "data": blue}]
    schema = image_blobs_schema()
    store.upsert(IMAGE_BLOBS, pa.Table.from_pylist([{**{n: None for n in schema.names}, **r} for r in blob_rows], schema=schema),
                 key="sha256")
    return store, red


def test_load_image_blobs_reads_bytes_and_mime(store_with_images):
    store, red = store_with_images
    assert load_image_blobs(store, ["red", "nothere"]) == {"red": (red, "image/png")}


def test_enrich_captions_captions_each_uncaptioned_picture_once(store_with_images):
    store, red = store_with_images
    with serve_fake_llm({"llava": FakeModel(reply="A red square.", vision=True)}) as server:
        backend = OllamaBackend("llava", server.url)
        summary = enrich_captions(store, "images__minilm", backend, prompt="Caption this.")
        assert (summary.candidates, summary.captioned, summary.no_bytes, summary.failed) == (2, 1, 1, 0)
        (request,) = server.chat_requests("/api/chat")
        assert request.body["messages"] == [{"role": "user", "content": "Caption this.", "images": [request.body["messages"][0]["images"][0]]}]
        assert decoded_images(request.body["messages"][0]) == [red]
        again = enrich_captions(store, "images__minilm", backend, prompt="Caption this.")
        assert (again.already_done, again.captioned) == (1, 0) and len(server.chat_requests("/api/chat")) == 1
    row = store.open_table(IMAGE_CAPTIONS).to_arrow().to_pylist()[0]
    assert row["caption"] == "A red square. I saw 1 image(s)." and row["model"] == "llava" and row["backend"] == "ollama"
    assert row["prompt"] == "Caption this." and row["completion_tokens"] == 7
    assert generated_captions(store, ["red", "blue"]) == {"red": "A red square. I saw 1 image(s)."}
    assert generated_captions(store, ["red"], model="other") == {}


def test_enrich_captions_needs_a_vision_model(store_with_images):
    store, _ = store_with_images
    with serve_fake_llm({"qwen2.5": FakeModel()}) as server:
        with pytest.raises(LlmError) as err:
            enrich_captions(store, "images__minilm", OllamaBackend("qwen2.5", server.url))
    assert err.value.kind == "images_rejected"


def test_default_template_is_exposed_for_copying():
    assert "{{ question }}" in DEFAULT_PROMPT_TEMPLATE and "Image Caption" in DEFAULT_PROMPT_TEMPLATE


@pytest.mark.slow
def test_query_image_words_reach_text_only_models_through_ocr(tmp_path):
    from PIL import Image, ImageDraw, ImageFont

    from mmrag.pipelines import ocr
    from mmrag.pipelines.generate import read_query_image

    if not ocr.ocr_available():
        pytest.skip("no OCR engine installed (rapidocr-onnxruntime or tesseract-ocr)")
    path = tmp_path / "receipt.png"
    image = Image.new("RGB", (360, 90), "white")
    ImageDraw.Draw(image).text((10, 15), "TOTAL 4711", fill="black", font=ImageFont.load_default(size=48))
    image.save(path)
    query = read_query_image(path, ocr=True)
    assert query.data == path.read_bytes() and query.mime_type == "image/png" and query.label == str(path)
    assert "4711" in query.ocr_text
    prompt = build_prompt("What is the total?", [], query_image=ImageContext(path=query.label, caption="", ocr_text=query.ocr_text))
    assert "**Text in image:** TOTAL 4711" in prompt
    assert read_query_image(path).ocr_text == ""  # OCR only when asked (text-only backends)
