"""The LLM backends against real wire protocols (a scripted Ollama/OpenAI server on 127.0.0.1) and the real llama.cpp runtime."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mmrag.config import LlmConfig
from mmrag.pipelines.llm import make_backend, parse_llm_spec
from mmrag.pipelines.llm.base import (
    ChatMessage,
    GenerationOptions,
    ImageInput,
    LlmError,
    Usage,
    classify_error_text,
    collect,
)
from mmrag.pipelines.llm.ollama_backend import (
    OllamaBackend,
    list_ollama_models,
    pull_ollama_model,
)
from mmrag.pipelines.llm.openai_backend import OpenAIBackend
from tests.fake_llm_server import FakeModel, decoded_images, serve_fake_llm, unused_port
from tests.helpers import embedded_llm_cache
from tests.tiny_checkpoints import png_bytes


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    return png_bytes(Image.new("RGB", (8, 8), color))


QUESTION = [ChatMessage("system", "Be brief."), ChatMessage("user", "What is an LSTM?")]
PNG_A = _png((255, 0, 0))
PNG_B = _png((0, 0, 255))


@pytest.fixture()
def fake():
    models = {
        "llama3.2-vision": FakeModel(vision=True, single_image=True),
        "llava": FakeModel(vision=True),
        "qwen2.5": FakeModel(reply="Plain text only."),
        "tiny-ctx": FakeModel(context_words=5),
    }
    with serve_fake_llm(models, pullable={"llama3.2-vision:11b"}) as server:
        yield server


# -- spec parsing -------------------------------------------------------------------------------


def test_parse_llm_spec_keeps_colons_in_the_model_and_falls_back_to_defaults():
    cfg = LlmConfig()
    assert parse_llm_spec("ollama:llama3.2-vision:11b", cfg) == ("ollama", "llama3.2-vision:11b")
    assert parse_llm_spec(None, cfg) == ("llamacpp", "qwen2.5-coder-0.5b")
    assert parse_llm_spec("openai", cfg) == ("openai", "llama3.2-vision")
    assert parse_llm_spec("ollama", LlmConfig(backend="ollama", model="llava")) == ("ollama", "llava")
    with pytest.raises(LlmError) as err:
        parse_llm_spec("vllm:foo", cfg)
    assert err.value.kind == "bad_spec" and "llamacpp, ollama, openai" in str(err.value)


@pytest.mark.parametrize(("text", "kind"), [
    ("request (630 tokens) exceeds the available context size (256 tokens), try increasing it", "context_overflow"),
    ("This model's maximum context length is 4096 tokens.", "context_overflow"),
    ("image input is not supported - hint: you may need to provide the mmproj", "images_rejected"),
    ("vision model only supports a single image per message", "images_rejected"),
    ("model 'x' not found", "model_not_found"),
    ("The model `x` does not exist.", "model_not_found"),
    ("out of memory", None),
])
def test_error_texts_of_the_known_servers_are_classified(text, kind):
    assert classify_error_text(text) == kind


# -- ollama ---------------------------------------------------------------------------------------


def test_ollama_streams_ndjson_deltas_then_usage(fake):
    backend = OllamaBackend("qwen2.5", fake.url, timeout_s=10)
    events = list(backend.generate(QUESTION, options=GenerationOptions(max_tokens=40, temperature=0.0, seed=7)))
    deltas = [e for e in events if isinstance(e, str)]
    usage = events[-1]
    assert len(deltas) > 1 and "".join(deltas) == "Plain text only."
    assert isinstance(usage, Usage) and usage.completion_tokens == 3 and usage.prompt_tokens == 6
    assert usage.load_s == pytest.approx(0.25) and usage.finish_reason == "stop" and usage.time_to_first_token_s is not None
    sent = fake.chat_requests("/api/chat")[-1].body
    assert sent["model"] == "qwen2.5" and sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is an LSTM?"}]
    assert sent["options"] == {"num_predict": 40, "temperature": 0.0, "seed": 7}


def test_ollama_non_streaming_gives_one_delta(fake):
    done = collect(OllamaBackend("qwen2.5", fake.url).generate(QUESTION, stream=False))
    assert done.text == "Plain text only." and done.usage.completion_tokens == 3
    assert fake.chat_requests("/api/chat")[-1].body["stream"] is False


def test_ollama_sends_image_bytes_base64_on_the_last_user_message(fake):
    backend = OllamaBackend("llava", fake.url)
    assert backend.supports_images  # from /api/show capabilities
    done = collect(backend.generate(QUESTION, [ImageInput(PNG_A), ImageInput(PNG_B)]))
    assert done.text.endswith("I saw 2 image(s).")
    system, user = fake.chat_requests("/api/chat")[-1].body["messages"]
    assert "images" not in system
    assert decoded_images(user) == [PNG_A, PNG_B]


def test_ollama_text_model_reports_no_image_support_from_show(fake):
    assert OllamaBackend("qwen2.5", fake.url).supports_images is False
    assert OllamaBackend("llava", fake.url, send_images=False).supports_images is False


def test_ollama_headers_are_the_clients_json_ones(fake):
    collect(OllamaBackend("qwen2.5", fake.url).generate(QUESTION))
    headers = fake.chat_requests("/api/chat")[-1].headers
    assert headers["content-type"] == "application/json" and headers["user-agent"].startswith("ollama-python/")


def test_ollama_missing_model_is_model_not_found(fake):
    with pytest.raises(LlmError) as err:
        collect(OllamaBackend("nope", fake.url).generate(QUESTION))
    assert err.value.kind == "model_not_found"
    assert "no model 'nope'" in str(err.value) and "mmrag llm pull ollama:nope" in str(err.value)


def test_ollama_image_rejected_by_text_model(fake):
    with pytest.raises(LlmError) as err:
        collect(OllamaBackend("qwen2.5", fake.url).generate(QUESTION, [ImageInput(PNG_A)]))
    assert err.value.kind == "images_rejected" and "llm.send_images=false" in str(err.value)


def test_ollama_context_overflow(fake):
    with pytest.raises(LlmError) as err:
        collect(OllamaBackend("tiny-ctx", fake.url).generate([ChatMessage("user", "word " * 50)]))
    assert err.value.kind == "context_overflow"


def test_ollama_unreachable_port_is_one_clear_error():
    url = f"http://127.0.0.1:{unused_port()}"
    for stream in (True, False):
        with pytest.raises(LlmError) as err:
            collect(OllamaBackend("qwen2.5", url, timeout_s=5).generate(QUESTION, stream=stream))
        assert err.value.kind == "unreachable" and url in str(err.value)


def test_ollama_host_comes_from_OLLAMA_HOST(fake, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", fake.url)
    backend = make_backend(LlmConfig(), "ollama:qwen2.5")
    assert backend.host == fake.url
    assert collect(backend.generate(QUESTION)).text == "Plain text only."


def test_pull_streams_progress_and_the_model_appears_in_list(fake):
    seen = []
    status = pull_ollama_model("llama3.2-vision:11b", fake.url, on_progress=lambda s, c, t: seen.append((s, c, t)))
    assert status == "success"
    assert ("pulling 11f274007f09", 500, 1000) in seen and seen[0][0] == "pulling manifest"
    assert fake.chat_requests("/api/pull")[-1].body == {"model": "llama3.2-vision:11b", "insecure": False, "stream": True}
    names = [m["name"] for m in list_ollama_models(fake.url)]
    assert "llama3.2-vision:11b" in names and names[0] == "llama3.2-vision"


def test_pull_of_an_unknown_model_is_an_error(fake):
    with pytest.raises(LlmError) as err:
        pull_ollama_model("no-such-model", fake.url)
    assert "file does not exist" in str(err.value)


# -- openai-compatible ----------------------------------------------------------------------------


def test_openai_streams_sse_with_usage_and_sends_the_bearer_key(fake, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test-123")
    backend = OpenAIBackend("qwen2.5", fake.url + "/v1", api_key_env="MY_KEY", timeout_s=10)
    events = list(backend.generate(QUESTION, options=GenerationOptions(max_tokens=30, temperature=0.1, seed=3)))
    assert "".join(e for e in events if isinstance(e, str)) == "Plain text only."
    usage = events[-1]
    assert usage.prompt_tokens == 6 and usage.completion_tokens == 3 and usage.finish_reason == "stop"
    sent = fake.chat_requests("/v1/chat/completions")[-1]
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["max_tokens"] == 30 and sent.body["temperature"] == 0.1 and sent.body["seed"] == 3
    assert sent.body["messages"][1] == {"role": "user", "content": "What is an LSTM?"}


def test_openai_non_streaming_json(fake):
    done = collect(OpenAIBackend("qwen2.5", fake.url + "/v1").generate(QUESTION, stream=False))
    assert done.text == "Plain text only." and done.usage.completion_tokens == 3
    assert "stream" not in fake.chat_requests("/v1/chat/completions")[-1].body


def test_openai_images_go_as_data_urls(fake):
    done = collect(OpenAIBackend("llava", fake.url + "/v1").generate(QUESTION, [ImageInput(PNG_A, "image/png"), ImageInput(PNG_B)]))
    assert done.text.endswith("I saw 2 image(s).")
    user = fake.chat_requests("/v1/chat/completions")[-1].body["messages"][-1]
    assert user["content"][0] == {"type": "text", "text": "What is an LSTM?"}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert decoded_images(user) == [PNG_A, PNG_B]


@pytest.mark.parametrize(("model", "images", "kind"), [
    ("nope", (), "model_not_found"),
    ("qwen2.5", (ImageInput(PNG_A),), "images_rejected"),
])
def test_openai_server_errors_become_typed_errors(fake, model, images, kind):
    with pytest.raises(LlmError) as err:
        collect(OpenAIBackend(model, fake.url + "/v1", max_retries=0).generate(QUESTION, images))
    assert err.value.kind == kind


def test_openai_context_overflow(fake):
    with pytest.raises(LlmError) as err:
        collect(OpenAIBackend("tiny-ctx", fake.url + "/v1").generate([ChatMessage("user", "word " * 50)]))
    assert err.value.kind == "context_overflow" and "maximum context length" in str(err.value)


def test_openai_wrong_path_is_not_a_missing_model(fake):
    with pytest.raises(LlmError) as err:
        collect(OpenAIBackend("qwen2.5", fake.url + "/nope", max_retries=0).generate(QUESTION))
    assert err.value.kind == "bad_request" and "openai_base_url" in str(err.value)


def test_openai_unreachable_port():
    url = f"http://127.0.0.1:{unused_port()}/v1"
    with pytest.raises(LlmError) as err:
        collect(OpenAIBackend("qwen2.5", url, max_retries=0, timeout_s=5).generate(QUESTION))
    assert err.value.kind == "unreachable" and url in str(err.value)


# -- llamacpp: GGUF assembly ------------------------------------------------------------------------


def _fake_parts(tmp_path: Path, monkeypatch, chunks: list[bytes], missing: int | None = None):
    """Install fake part modules ``fakepart_N`` whose get_part_path() returns files holding ``chunks``."""
    import sys
    import types

    from mmrag.pipelines.llm.gguf import GgufModelSpec

    for n, chunk in enumerate(chunks, 1):
        if n == missing:
            monkeypatch.delitem(sys.modules, f"fakepart_{n}", raising=False)
            continue
        path = tmp_path / f"part{n}.bin"
        path.write_bytes(chunk)
        module = types.ModuleType(f"fakepart_{n}")
        module.get_part_path = lambda p=path: str(p)
        monkeypatch.setitem(sys.modules, f"fakepart_{n}", module)
    whole = b"".join(chunks)
    return GgufModelSpec(name="fake", description="", file_name="fake.gguf", size=len(whole),
                         sha256=hashlib.sha256(whole).hexdigest(), package_prefix="fake-part", module_prefix="fakepart_",
                         version="1.0", n_parts=len(chunks))


def test_assembly_concatenates_verifies_and_renames_atomically(tmp_path, monkeypatch):
    from mmrag.pipelines.llm.gguf import assemble_model

    chunks = [os.urandom(1000), os.urandom(777), os.urandom(5)]
    spec = _fake_parts(tmp_path, monkeypatch, chunks)
    target = assemble_model(spec, tmp_path / "cache")
    assert target.read_bytes() == b"".join(chunks)
    assert not (tmp_path / "cache" / "fake.gguf.partial").exists()
    stamp = (tmp_path / "cache" / "fake.gguf.verified").stat().st_mtime_ns
    assert assemble_model(spec, tmp_path / "cache") == target  # stamped: no re-hash, same file
    assert (tmp_path / "cache" / "fake.gguf.verified").stat().st_mtime_ns == stamp


def test_assembly_resumes_an_interrupted_partial_file(tmp_path, monkeypatch):
    from mmrag.pipelines.llm import gguf

    chunks = [os.urandom(1000), os.urandom(700), os.urandom(300)]
    spec = _fake_parts(tmp_path, monkeypatch, chunks)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf.partial").write_bytes(b"".join(chunks)[:1234])  # stopped inside part 2
    copied = []
    real_open = open

    def spying_open(path, mode="r", *args, **kwargs):
        if "part" in str(path) and "rb" in mode:
            copied.append(Path(path).name)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spying_open)
    target = gguf.assemble_model(spec, cache)
    monkeypatch.undo()
    assert target.read_bytes() == b"".join(chunks)
    assert "part1.bin" not in copied and "part2.bin" in copied  # part 1 was already there


def test_assembly_names_the_missing_part_package(tmp_path, monkeypatch):
    from mmrag.pipelines.llm.gguf import assemble_model

    spec = _fake_parts(tmp_path, monkeypatch, [b"a" * 10, b"b" * 10, b"c" * 10], missing=2)
    with pytest.raises(LlmError) as err:
        assemble_model(spec, tmp_path / "cache")
    assert err.value.kind == "model_parts_missing"
    assert "fake-part2==1.0" in str(err.value) and "fake-part1" not in str(err.value)
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_assembly_rejects_a_checksum_mismatch_and_drops_the_partial(tmp_path, monkeypatch):
    import dataclasses

    from mmrag.pipelines.llm.gguf import assemble_model

    spec = dataclasses.replace(_fake_parts(tmp_path, monkeypatch, [b"x" * 100, b"y" * 100]), sha256="0" * 64)
    with pytest.raises(LlmError) as err:
        assemble_model(spec, tmp_path / "cache")
    assert err.value.kind == "checksum_mismatch"
    assert not (tmp_path / "cache" / "fake.gguf").exists() and not (tmp_path / "cache" / "fake.gguf.partial").exists()


def test_unknown_gguf_model_and_missing_file():
    from mmrag.pipelines.llm.gguf import gguf_spec, resolve_gguf

    assert gguf_spec("qwen2.5-0.5b").name == "qwen2.5-coder-0.5b"
    with pytest.raises(LlmError) as err:
        gguf_spec("mistral")
    assert err.value.kind == "model_not_found" and "qwen2.5-coder-0.5b" in str(err.value)
    with pytest.raises(LlmError) as err:
        resolve_gguf("/nowhere/model.gguf", ".")
    assert err.value.kind == "model_not_found"


# -- llamacpp: the real model ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen_backend():
    """The real Qwen2.5-Coder-0.5B through xllamacpp, assembled and loaded once per session."""
    # The app's own default cache (gitignored): assembled once per machine, shared with test_cli_llm's load.
    cache = embedded_llm_cache()
    from mmrag.pipelines.llm.llamacpp_backend import LlamaCppBackend

    # One thread: on a busy 2-core machine two llama.cpp threads spin at barriers and run 3-10x slower.
    backend = LlamaCppBackend("qwen2.5-coder-0.5b", cache, n_ctx=1024, n_threads=1)
    backend.load()
    return backend


@pytest.mark.slow
def test_llamacpp_streams_a_short_real_answer(qwen_backend):
    options = GenerationOptions(max_tokens=32, temperature=0.0, seed=1)
    events = list(qwen_backend.generate([ChatMessage("user", "What is the capital of France? Answer in one word.")], options=options))
    text = "".join(e for e in events if isinstance(e, str))
    usage = events[-1]
    assert "paris" in text.lower()
    assert isinstance(usage, Usage) and 0 < usage.completion_tokens <= 32 and usage.prompt_tokens > 5
    assert usage.time_to_first_token_s is not None and usage.total_s >= usage.time_to_first_token_s


@pytest.mark.slow
def test_llamacpp_reads_images_as_caption_and_ocr_text(qwen_backend):
    image = ImageInput(PNG_A, label="fig1.png", caption="A bar chart of sales", ocr_text="Total sales: 4711 units")
    done = collect(qwen_backend.generate(
        [ChatMessage("user", "How many units were sold in total, according to the image? Reply with the number only.")],
        [image], stream=False, options=GenerationOptions(max_tokens=16, temperature=0.0, seed=1)))
    assert "4711" in done.text


@pytest.mark.slow
def test_llamacpp_context_overflow_is_a_typed_error(qwen_backend):
    with pytest.raises(LlmError) as err:
        collect(qwen_backend.generate([ChatMessage("user", "word " * 1500)], options=GenerationOptions(max_tokens=4)))
    assert err.value.kind == "context_overflow" and "llm.n_ctx" in str(err.value)
