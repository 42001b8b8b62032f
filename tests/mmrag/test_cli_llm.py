"""``mmrag ask`` and ``mmrag llm …`` in process, against the scripted Ollama/OpenAI server and the real embedded model."""

from __future__ import annotations

import json
import os
import pytest
from typer.testing import CliRunner

from mmrag.cli import llm as cli_llm
from mmrag.cli import app
from mmrag.pipelines.retrieve import Hit
from mmrag.pipelines.store import IndexStore
from tests.fake_llm_server import FakeModel, decoded_images, serve_fake_llm, unused_port
from tests.helpers import REPO_ROOT

runner = CliRunner()

HITS = [
    Hit(target="text", id="t1", score=0.91, rank=1, similarity=0.91, retrieval_score=0.91, doc_url="https://blog.example/lstm",
        article_title="Understanding LSTMs", section="The Core Idea", text="The cell state runs straight down the chain."),
    Hit(target="image", id="i1", score=0.42, rank=1, similarity=0.42, retrieval_score=0.42, doc_url="https://blog.example/lstm",
        article_title="Understanding LSTMs", section="Diagrams", text="An LSTM cell", src_url="https://blog.example/img/cell.png",
        image_sha256="cafe", image_status="ok"),
]


@pytest.fixture()
def db(tmp_path, monkeypatch):
    """An existing (empty) database, and retrieval returning :data:`HITS` for every question."""
    path = tmp_path / "db"
    IndexStore(str(path))
    asked = []

    def fake_retrieve(cfg, question, image):
        asked.append((question, image))
        return list(HITS)

    monkeypatch.setattr(cli_llm, "retrieve_for_question", fake_retrieve)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return str(path)


@pytest.fixture()
def fake():
    with serve_fake_llm({"llava": FakeModel(reply="Cells keep state.", vision=True), "qwen2.5": FakeModel(reply="Cells keep state.")},
                        pullable={"llama3.2-vision"}) as server:
        yield server


def test_ask_streams_the_answer_then_lists_sources(db, fake):
    result = runner.invoke(app, ["ask", "What is an LSTM?", "--db", db, "--llm", "ollama:qwen2.5"], env={"OLLAMA_HOST": fake.url})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Cells keep state."
    assert "Sources:" in lines
    assert "[1]  0.910  text   Understanding LSTMs › The Core Idea  https://blog.example/lstm" in result.stdout
    assert "image: https://blog.example/img/cell.png" in result.stdout
    assert "ollama:qwen2.5" in lines[-1] and "answer tokens" in lines[-1]
    prompt = fake.chat_requests("/api/chat")[-1].body["messages"][-1]["content"]
    assert prompt.startswith('Given the query "What is an LSTM?"') and "**Snippet:** The cell state runs straight" in prompt


def test_ask_json_has_answer_sources_timings_and_tokens(db, fake):
    result = runner.invoke(app, ["ask", "What is an LSTM?", "--db", db, "--llm", "openai:qwen2.5", "--json"],
                           env={"MMRAG_LLM__OPENAI_BASE_URL": fake.url + "/v1"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"] == "Cells keep state." and data["error"] is None
    assert data["backend"] == "openai" and data["model"] == "qwen2.5"
    assert [s["target"] for s in data["sources"]] == ["text", "image"]
    assert data["sources"][1]["image_path"] == "https://blog.example/img/cell.png" and data["sources"][0]["score"] == 0.91
    assert data["usage"]["completion_tokens"] == 3 and data["usage"]["prompt_tokens"] > 10
    assert data["usage"]["total_s"] > 0 and data["usage"]["time_to_first_token_s"] is not None


def test_ask_with_a_query_image_sends_it_to_a_vision_model(db, fake, tmp_path):
    from PIL import Image

    picture = tmp_path / "question.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(picture)
    result = runner.invoke(app, ["ask", "What is shown?", "--db", db, "--llm", "ollama:llava", "--image", str(picture)],
                           env={"OLLAMA_HOST": fake.url})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Cells keep state. I saw 1 image(s).")
    message = fake.chat_requests("/api/chat")[-1].body["messages"][-1]
    assert decoded_images(message) == [picture.read_bytes()]
    assert f"**Query image:**  {picture}" in message["content"]


def test_ask_unreachable_server_still_prints_sources(db):
    url = f"http://127.0.0.1:{unused_port()}"
    result = runner.invoke(app, ["ask", "What is an LSTM?", "--db", db, "--llm", "ollama:qwen2.5"], env={"OLLAMA_HOST": url})
    assert result.exit_code == 1
    assert "Sources:" in result.stdout and "https://blog.example/lstm" in result.stdout
    assert result.stderr.strip() == f"mmrag: error: cannot reach Ollama at {url} (is `ollama serve` running? set llm.ollama_host or OLLAMA_HOST)"
    assert "Traceback" not in result.output


def test_ask_missing_model_json_reports_the_error_kind(db, fake):
    result = runner.invoke(app, ["ask", "q", "--db", db, "--llm", "ollama:nope", "--json"], env={"OLLAMA_HOST": fake.url})
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["error"]["kind"] == "model_not_found" and len(data["sources"]) == 2 and data["answer"] == ""


def test_ask_rejects_bad_options_with_one_line(db, tmp_path):
    result = runner.invoke(app, ["ask", "q", "--db", db, "--llm", "gpt:4"])
    assert result.exit_code == 2 and "unknown backend 'gpt'" in result.stderr
    result = runner.invoke(app, ["ask", "q", "--db", db, "--prompt-template", str(tmp_path / "none.j2")])
    assert result.exit_code == 2 and "cannot read" in result.stderr
    result = runner.invoke(app, ["ask", "q", "--db", db, "--image", str(tmp_path / "none.png")])
    assert result.exit_code == 2 and "--image: no file" in result.stderr
    result = runner.invoke(app, ["ask", "q", "--db", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no database" in result.stderr


def test_ask_uses_a_user_prompt_template(db, fake, tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("Answer {{ question }} from {{ text_hits | length }} snippets.", encoding="utf-8")
    result = runner.invoke(app, ["ask", "why?", "--db", db, "--llm", "ollama:qwen2.5", "--prompt-template", str(template)],
                           env={"OLLAMA_HOST": fake.url})
    assert result.exit_code == 0, result.output
    assert fake.chat_requests("/api/chat")[-1].body["messages"][-1]["content"] == "Answer why? from 1 snippets."


def test_llm_pull_streams_progress_and_list_shows_the_model(fake):
    result = runner.invoke(app, ["llm", "pull", "ollama:llama3.2-vision", "--host", fake.url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ollama:llama3.2-vision: success"
    assert "pulling manifest" in result.stderr and "pulling 11f274007f09 50%" in result.stderr
    listed = runner.invoke(app, ["llm", "list", "--host", fake.url, "--json"])
    data = json.loads(listed.stdout)
    assert "llama3.2-vision" in [m["name"] for m in data["ollama"]["models"]]
    assert data["llamacpp"][0]["name"] == "llamacpp:qwen2.5-coder-0.5b"


def test_llm_pull_unknown_model_and_unreachable_list(fake):
    result = runner.invoke(app, ["llm", "pull", "ollama:nope", "--host", fake.url])
    assert result.exit_code == 1 and result.stderr.startswith("mmrag: error: ") and "file does not exist" in result.stderr
    url = f"http://127.0.0.1:{unused_port()}"
    listed = runner.invoke(app, ["llm", "list", "--host", url])
    assert listed.exit_code == 0 and f"unavailable: cannot reach Ollama at {url}" in listed.stdout


def test_llm_template_prints_the_default():
    from mmrag.pipelines.generate import DEFAULT_PROMPT_TEMPLATE

    result = runner.invoke(app, ["llm", "template"])
    assert result.exit_code == 0 and result.stdout == DEFAULT_PROMPT_TEMPLATE


@pytest.mark.slow
def test_ask_with_the_embedded_model_end_to_end(db):
    pytest.importorskip("xllamacpp", reason="the llamacpp runtime is installed by the [llm] extra")
    cache = os.environ.get("MMRAG_TEST_MODEL_CACHE") or str(REPO_ROOT / ".mmrag" / "models")
    env = {"MMRAG_LLM__CACHE_DIR": cache, "MMRAG_LLM__N_CTX": "1024", "MMRAG_LLM__N_THREADS": "1", "MMRAG_LLM__MAX_TOKENS": "32",
           "MMRAG_LLM__TEMPERATURE": "0", "MMRAG_LLM__SEED": "1"}
    result = runner.invoke(app, ["ask", "Where does the cell state run?", "--db", db, "--json"], env=env)
    if result.exit_code == 1 and "not installed" in result.stdout:
        pytest.skip("the GGUF part packages are not installed")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "llamacpp" and data["answer"].strip()
    assert 0 < data["usage"]["completion_tokens"] <= 32 and len(data["sources"]) == 2
