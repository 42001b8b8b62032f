"""One rule for every bad input: one ``mmrag: error:`` line, exit 2 (1 for a run that could not do its job)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.pipelines.store import IndexStore
from tests.fake_llm_server import FakeModel, serve_fake_llm

runner = CliRunner()


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mmrag: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("where", ["1=1) OR (1=1", "1=1; DROP TABLE documents", "1=1 -- comment"])
def test_search_where_injection_is_refused(where, tmp_path):
    result = runner.invoke(app, ["search", "q", "--url-prefix", "http://nope/", "--where", where, "--db", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "--where" in one_error_line(result)


@pytest.mark.parametrize("args, field", [
    (["--threshold", "2.0"], "threshold: Input should be less than or equal to 1 (got 2.0)"),
    (["--threshold", "2.0", "--mode", "softmax"], "search.text_threshold"),
    (["--threshold", "-2", "--mode", "cosine"], "search.cosine_threshold"),
    (["--temperature", "0"], "search.text_temperature"),
    (["--k", "100000"], "search.text_k"),
])
def test_search_option_values_obey_the_config_bounds(args, field, tmp_path):
    result = runner.invoke(app, ["search", "q", "--db", str(tmp_path / "none"), *args])
    assert result.exit_code == 2
    assert field in one_error_line(result)


def test_a_queries_file_that_is_not_utf8_names_file_and_offset(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(b'{"query": "caf\xe9"}\n')
    IndexStore(str(tmp_path / "db"))
    result = runner.invoke(app, ["eval", "check", str(queries), "--db", str(tmp_path / "db")])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert str(queries) in line and "not UTF-8" in line and "byte offset 14" in line


def test_ask_with_a_file_that_is_not_an_image(tmp_path):
    bogus = tmp_path / "notimage.png"
    bogus.write_text("hello")
    IndexStore(str(tmp_path / "db"))
    result = runner.invoke(app, ["ask", "what?", "--image", str(bogus), "--db", str(tmp_path / "db")])
    assert result.exit_code == 2
    assert "notimage.png" in one_error_line(result)


def test_ask_with_an_image_nothing_can_use(tmp_path, monkeypatch):
    from mmrag.cli import llm as cli_llm

    picture = tmp_path / "pic.png"
    Image.new("RGB", (8, 8), "white").save(picture)
    IndexStore(str(tmp_path / "db"))
    monkeypatch.setattr(cli_llm, "retrieve_for_question", lambda cfg, question, image: [])
    monkeypatch.setenv("MMRAG_LLM__OCR_QUERY_IMAGE", "false")
    with serve_fake_llm({"qwen2.5": FakeModel(reply="an answer")}) as server:  # a text-only model
        result = runner.invoke(app, ["ask", "what?", "--image", str(picture), "--db", str(tmp_path / "db"),
                                     "--llm", "ollama:qwen2.5"], env={"OLLAMA_HOST": server.url})
    assert result.exit_code == 2
    assert not server.chat_requests("/api/chat")  # refused before the model was asked
    assert "--image cannot be used" in one_error_line(result)


def test_index_with_an_unknown_embedder_fails_before_any_flow(tmp_path):
    result = runner.invoke(app, ["index", str(tmp_path), "--db", str(tmp_path / "db"), "--embedder", "nope"])
    assert result.exit_code == 2
    assert "unknown embedder 'nope'" in one_error_line(result)
