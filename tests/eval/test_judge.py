"""The judge: ragas' judged metrics over an OpenAI-compatible endpoint.

Exact checks against the loopback fake server (what was sent, including the image as a ``data:`` URL,
and what comes back); failure recording (bad output, unreachable endpoint, unknown model, images
refused); and the real thing: the embedded llama.cpp model served on 127.0.0.1 (slow).
"""

from __future__ import annotations

import base64
import io
import json
import socket
from urllib.parse import urlsplit

import pytest
from PIL import Image

from mmrag.eval.judge import JUDGE_COLUMNS, JudgeSpec, judge_rows, parse_judge_spec
from mmrag.config import EvalConfig, LlmConfig
from mmrag.pipelines.llm.base import LlmError
from tests.fake_llm_server import FakeModel, decoded_images, serve_fake_llm, unused_port

QUESTION = "What constant does reciprocal rank fusion use?"
ANSWER = "Reciprocal rank fusion uses k = 60. It was invented in 1990."
CONTEXT = "RRF adds 1/(k + rank) for each list a document appears in, with the constant k = 60."


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode("ascii")

REPLIES = {  # distinctive words of each ragas prompt -> the judge's reply
    "judge the faithfulness of a series of statements": {"statements": [
        {"statement": "Reciprocal rank fusion uses k = 60.", "reason": "in the context", "verdict": 1},
        {"statement": "Reciprocal rank fusion was invented in 1990.", "reason": "not in the context", "verdict": 0}]},
    "analyze the complexity of each sentence": {"statements": ["Reciprocal rank fusion uses k = 60.",
                                                               "Reciprocal rank fusion was invented in 1990."]},
    "Generate a question for the given answer": {"question": QUESTION, "noncommittal": 0},
    "evaluating whether a response is faithful": {"faithful": True, "reason": "the image and text support it"},
    "evaluating whether a response for a given question is relevant": {"relevant": False, "reason": "off topic"},
}
SCHEMA_NAMES = {"judge the faithfulness of a series of statements": "NLIStatementOutput",
                "analyze the complexity of each sentence": "StatementGeneratorOutput",
                "Generate a question for the given answer": "AnswerRelevanceOutput",
                "evaluating whether a response is faithful": "MultiModalFaithfulnessOutput",
                "evaluating whether a response for a given question is relevant": "MultiModalRelevanceOutput"}


def _prompt_text(messages) -> str:
    """The text of the first user message (ragas' prompt; instructor's retries append their own turns after it)."""
    content = next(m for m in messages if m["role"] == "user")["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if p.get("type") == "text")


def _script(replies: dict, sent: list[str]):
    def reply(model, messages) -> str:
        text = _prompt_text(messages)
        key = next(k for k in replies if k in text)
        out = replies[key] if isinstance(replies[key], str) else json.dumps(replies[key])
        sent.append(out)
        return out
    return reply


def _rows():
    return [{"query_id": "q1", "llm": "x:m", "query": QUESTION, "answer": ANSWER, "error": None},
            {"query_id": "q2", "llm": "x:m", "query": "other", "answer": None, "error": "LlmError: timed out"}]


def test_parse_judge_spec():
    llm = LlmConfig(ollama_host="http://10.0.0.5:11434", openai_base_url="http://127.0.0.1:8000/v1/")
    assert parse_judge_spec("llamacpp", llm) == JudgeSpec("llamacpp", "qwen2.5-coder-0.5b", None)
    assert parse_judge_spec("llamacpp:qwen2.5-1.5b", llm) == JudgeSpec("llamacpp", "qwen2.5-1.5b", None)
    assert parse_judge_spec("ollama:llama3.2-vision:11b", llm) == JudgeSpec("ollama", "llama3.2-vision:11b", "http://10.0.0.5:11434/v1")
    assert parse_judge_spec("openai:gpt-x@http://h:9/v1/", llm) == JudgeSpec("openai", "gpt-x", "http://h:9/v1")
    assert parse_judge_spec("openai:gpt-x", llm).base_url == "http://127.0.0.1:8000/v1"
    for bad in ("llamacpp@http://h/v1", "openai:m@h:9", "vllm:m"):
        with pytest.raises(LlmError) as info:
            parse_judge_spec(bad, llm)
        assert info.value.kind == "bad_spec"


def test_judge_sends_ragas_prompts_with_schemas_and_the_image_as_a_data_url(minilm):
    sent: list[str] = []
    with serve_fake_llm({"judge-vl": FakeModel(vision=True)}) as fake:
        fake.reply_for = _script(REPLIES, sent)
        rows = judge_rows(_rows(), [[CONTEXT], []], [[PNG_URL], []], spec=JudgeSpec("openai", "judge-vl", fake.url + "/v1"),
                          llm_config=LlmConfig(), settings=EvalConfig(judge_images=True), embed=minilm.embed_texts)
        requests = fake.chat_requests("/v1/chat/completions")
    judged, failed = rows
    assert judged["faithfulness"] == 0.5  # one of two statements supported
    assert judged["answer_relevancy"] == pytest.approx(1.0, abs=1e-5)  # the judge's question is the real one
    assert judged["multimodal_faithfulness"] == 1.0 and judged["multimodal_relevance"] == 0.0
    assert judged["judge_error"] is None and judged["judge"] == f"openai:judge-vl@{fake.url}/v1" and judged["judge_s"] > 0
    assert judged["judge_tokens_out"] == sum(len(s.split()) for s in sent) and judged["judge_tokens_in"] > 0
    assert all(failed[c] is None for c in (*JUDGE_COLUMNS, "judge", "judge_s"))  # a failed answer is not judged

    assert len(requests) == 5
    for request in requests:
        body = request.body
        key = next(k for k in SCHEMA_NAMES if k in _prompt_text(body["messages"]))
        assert body["model"] == "judge-vl" and body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == SCHEMA_NAMES[key]
        images = decoded_images(next(m for m in body["messages"] if m["role"] == "user"))
        assert images == ([PNG] if key.startswith("evaluating") else [])
        if key.startswith(("judge the faithfulness", "evaluating")):
            assert CONTEXT in _prompt_text(body["messages"])


def test_unparseable_judge_output_is_recorded_per_metric_after_the_retry(minilm):
    replies = {**REPLIES, "judge the faithfulness of a series of statements": "Yes, all of it is faithful."}
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = _script(replies, [])
        rows = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=JudgeSpec("openai", "judge", fake.url + "/v1"),
                          llm_config=LlmConfig(), settings=EvalConfig(judge_max_retries=1), embed=minilm.embed_texts)
        nli_calls = [r for r in fake.chat_requests("/v1/chat/completions") if "judge the faithfulness" in _prompt_text(r.body["messages"])]
    row = rows[0]
    assert len(nli_calls) == 2  # first try + one retry
    assert row["faithfulness"] is None and row["judge_error"].startswith("faithfulness: ")
    assert "did not fit the schema after 2 attempt(s)" in row["judge_error"]
    assert row["answer_relevancy"] == pytest.approx(1.0, abs=1e-5)  # the other metric still counts
    assert row["multimodal_faithfulness"] is None and "multimodal" not in row["judge_error"]  # not asked for


def test_json_mode_puts_the_schema_in_the_prompt_instead(minilm):
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = _script(REPLIES, [])
        row = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=JudgeSpec("openai", "judge", fake.url + "/v1"), llm_config=LlmConfig(),
                         settings=EvalConfig(judge_output="json"), embed=minilm.embed_texts)[0]
        bodies = [r.body for r in fake.chat_requests("/v1/chat/completions")]
    assert row["faithfulness"] == 0.5 and row["judge_error"] is None
    assert all(b["response_format"] == {"type": "json_object"} for b in bodies)
    schemas = [" ".join(str(m["content"]) for m in b["messages"] if m["role"] == "system") for b in bodies]
    assert len(schemas) == 3 and all('"properties"' in s for s in schemas)  # instructor's JSON mode: schema in a system turn
    assert '"noncommittal"' in schemas[2] and '"verdict"' in schemas[1]


def test_endpoint_failures_are_recorded_not_raised(minilm):
    with serve_fake_llm({"text-only": FakeModel()}) as fake:
        fake.reply_for = _script(REPLIES, [])
        refused = judge_rows(_rows()[:1], [[CONTEXT]], [[PNG_URL]], spec=JudgeSpec("openai", "text-only", fake.url + "/v1"),
                             llm_config=LlmConfig(), settings=EvalConfig(judge_images=True), embed=minilm.embed_texts)[0]
        missing = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=JudgeSpec("openai", "nope", fake.url + "/v1"),
                             llm_config=LlmConfig(), settings=EvalConfig(), embed=minilm.embed_texts)[0]
    assert refused["faithfulness"] == 0.5 and refused["multimodal_faithfulness"] is None
    assert "multimodal_faithfulness: images_rejected" in refused["judge_error"]
    assert "multimodal_relevance: images_rejected" in refused["judge_error"]
    assert missing["faithfulness"] is None and missing["answer_relevancy"] is None
    assert "faithfulness: model_not_found" in missing["judge_error"]
    down = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=JudgeSpec("openai", "judge", f"http://127.0.0.1:{unused_port()}/v1"),
                      llm_config=LlmConfig(), settings=EvalConfig(), embed=minilm.embed_texts)[0]
    assert down["faithfulness"] is None and "faithfulness: unreachable" in down["judge_error"]
    assert "answer_relevancy: unreachable" in down["judge_error"]


def test_an_embedded_judge_that_cannot_start_marks_every_answer(minilm, tmp_path):
    rows = judge_rows(_rows(), [[CONTEXT], []], [[], []], spec=JudgeSpec("llamacpp", str(tmp_path / "missing.gguf"), None),
                      llm_config=LlmConfig(), settings=EvalConfig(), embed=minilm.embed_texts)
    assert rows[0]["faithfulness"] is None and rows[0]["judge_error"].startswith("judge unavailable: model_not_found")
    assert rows[1]["judge_error"] is None  # the failed answer was never going to be judged


@pytest.mark.slow
def test_the_embedded_model_served_on_loopback_judges_for_real(minilm):
    """Qwen2.5-Coder 0.5B through llama.cpp's own HTTP server: values in [0, 1] or recorded failures; server gone after."""
    from mmrag.eval.answers import llamacpp_ready

    llm = LlmConfig(n_threads=1)
    reason = llamacpp_ready(__import__("mmrag.config").config.MmragConfig(llm=llm), "qwen2.5-coder-0.5b")
    if reason:
        pytest.skip(f"embedded model not available: {reason}")
    seen: list[str] = []
    rows = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=parse_judge_spec("llamacpp", llm), llm_config=llm,
                      settings=EvalConfig(judge_max_tokens=512), embed=minilm.embed_texts, log=seen.append)
    row = rows[0]
    url = urlsplit(row["judge"].split("@", 1)[1])
    assert row["judge"].startswith("llamacpp:qwen2.5-coder-0.5b@") and url.hostname == "127.0.0.1" and url.path == "/v1"
    assert row["judge_tokens_in"] > 0 and row["judge_s"] > 0  # real HTTP calls were answered
    judged = [column for column in ("faithfulness", "answer_relevancy") if row[column] is not None]
    assert judged, f"the real judge produced no verdict: {row['judge_error']}"  # a recorded error alone is a failure
    assert all(0.0 <= row[column] <= 1.0 for column in judged)
    for column in {"faithfulness", "answer_relevancy"} - set(judged):
        assert f"{column}: " in (row["judge_error"] or "")  # a metric without a value says why
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", url.port))  # stopped with the run
    print(f"\nreal judge: {json.dumps({k: row[k] for k in (*JUDGE_COLUMNS, 'judge_error', 'judge_s', 'judge_tokens_in', 'judge_tokens_out')})}")


def test_repeats_give_mean_and_spread_and_the_cache_makes_a_rerun_call_nothing(minilm, tmp_path):
    """Three repeats of a judge that changes its mind: mean and sample std; a rerun of the same answer from the
    cache file makes no call; a changed answer, reference or repeat count asks again only for what is new."""
    from mmrag.eval.judge import JudgeCache, spread

    nli_calls = 0

    def flipping(model, messages):
        nonlocal nli_calls
        text = _prompt_text(messages)
        if "judge the faithfulness" in text:  # supports both statements on the 1st and 3rd call, one of two on the 2nd
            nli_calls += 1
            verdicts = [1, 1] if nli_calls % 2 else [1, 0]
            return json.dumps({"statements": [{"statement": s, "reason": "r", "verdict": v}
                                              for s, v in zip(REPLIES["analyze the complexity of each sentence"]["statements"], verdicts)]})
        key = next(k for k in REPLIES if k in text)
        return json.dumps(REPLIES[key])

    settings = EvalConfig(judge_repeats=3)
    cache_file = tmp_path / "judge-cache.jsonl"
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = flipping
        spec = JudgeSpec("openai", "judge", fake.url + "/v1")
        first = judge_rows(_rows(), [[CONTEXT], []], [[], []], spec=spec, llm_config=LlmConfig(), settings=settings,
                           embed=minilm.embed_texts, cache=JudgeCache(cache_file))[0]
        calls_first = len(fake.chat_requests("/v1/chat/completions"))
        seen: list[str] = []
        again = judge_rows(_rows(), [[CONTEXT], []], [[], []], spec=spec, llm_config=LlmConfig(), settings=settings,
                           embed=minilm.embed_texts, cache=JudgeCache(cache_file), log=seen.append)[0]
        calls_again = len(fake.chat_requests("/v1/chat/completions")) - calls_first
        changed = _rows()[:1]
        changed[0]["reference_answer"] = "k = 60"
        judge_rows(changed, [[CONTEXT]], [[]], spec=spec, llm_config=LlmConfig(), settings=settings,
                   embed=minilm.embed_texts, cache=JudgeCache(cache_file))
        calls_changed = len(fake.chat_requests("/v1/chat/completions")) - calls_first - calls_again
        more = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=spec, llm_config=LlmConfig(),
                          settings=EvalConfig(judge_repeats=4), embed=minilm.embed_texts, cache=JudgeCache(cache_file))[0]
        calls_more = len(fake.chat_requests("/v1/chat/completions")) - calls_first - calls_again - calls_changed
    # 3 repeats x (statements + NLI for faithfulness, 1 question for answer relevancy) = 9 calls
    assert calls_first == 9 and first["judge_repeats"] == 3 and first["judge_cached"] == 0
    assert first["faithfulness"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert first["faithfulness_std"] == pytest.approx(spread([1.0, 0.5, 1.0])) and first["faithfulness_std"] > 0.28
    assert first["answer_relevancy"] == pytest.approx(1.0, abs=1e-5) and first["answer_relevancy_std"] == pytest.approx(0.0, abs=1e-6)
    assert first["multimodal_faithfulness_std"] is None and first["judge_error"] is None
    assert calls_again == 0 and again["judge_cached"] == 6  # 2 metrics x 3 repeats, no endpoint opened
    assert {k: again[k] for k in (*JUDGE_COLUMNS, "faithfulness_std")} == {k: first[k] for k in (*JUDGE_COLUMNS, "faithfulness_std")}
    assert again["judge"] == "openai:judge (cached)" and any("all 6 verdicts cached" in m for m in seen)
    assert calls_changed == 9  # another reference answer is another key
    assert calls_more == 3 and more["judge_cached"] == 6 and more["judge_repeats"] == 4  # only the 4th repeat is new
    lines = [json.loads(line) for line in cache_file.read_text().splitlines()]
    assert len(lines) == 6 + 6 + 2 and {line["metric"] for line in lines} == {"faithfulness", "answer_relevancy"}


def test_a_failed_verdict_is_not_cached(minilm, tmp_path):
    from mmrag.eval.judge import JudgeCache

    replies = {**REPLIES, "judge the faithfulness of a series of statements": "not json"}
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = _script(replies, [])
        spec = JudgeSpec("openai", "judge", fake.url + "/v1")
        for _ in range(2):
            row = judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=spec, llm_config=LlmConfig(),
                             settings=EvalConfig(judge_max_retries=0, judge_repeats=2), embed=minilm.embed_texts,
                             cache=JudgeCache(tmp_path / "c.jsonl"))[0]
        nli = [r for r in fake.chat_requests("/v1/chat/completions") if "judge the faithfulness" in _prompt_text(r.body["messages"])]
    assert len(nli) == 4  # asked again on the rerun: failures are not cached
    assert row["faithfulness"] is None and row["judge_cached"] == 2  # the answer relevancy verdicts were
    assert "faithfulness: repeat 1/2: " in row["judge_error"] and "faithfulness: repeat 2/2: " in row["judge_error"]


def test_temperature_and_top_p_reach_the_judge_and_top_p_keys_the_cache_only_off_default(minilm):
    """ragas' default top_p 0.1 makes a higher temperature ineffective; eval.judge_top_p is sent, and changes the
    verdict keys only when it differs from that default (caches written before the setting keep their keys)."""
    from mmrag.eval.judge import verdict_key

    bodies = {}
    with serve_fake_llm({"judge": FakeModel()}) as fake:
        fake.reply_for = _script(REPLIES, [])
        for name, settings in (("default", EvalConfig()), ("open", EvalConfig(judge_temperature=0.7, judge_top_p=1.0))):
            judge_rows(_rows()[:1], [[CONTEXT]], [[]], spec=JudgeSpec("openai", "judge", fake.url + "/v1"), llm_config=LlmConfig(),
                       settings=settings, embed=minilm.embed_texts)
            bodies[name] = fake.chat_requests("/v1/chat/completions")[-1].body
    assert bodies["default"]["temperature"] == 0.01 and bodies["default"]["top_p"] == 0.1
    assert bodies["open"]["temperature"] == 0.7 and bodies["open"]["top_p"] == 1.0

    def key(settings):
        return verdict_key(judge="j", prompt="p", metric="faithfulness", question="q", answer="a", contexts=["c"], images=[],
                           reference=None, repeat=0, settings=settings)

    assert key(EvalConfig()) == key(EvalConfig(judge_top_p=0.1)) != key(EvalConfig(judge_top_p=1.0))
