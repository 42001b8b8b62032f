"""Terminal-safe output: stored escape sequences never reach a terminal; --json keeps the exact text."""

from __future__ import annotations

import json

import pytest

from mmrag.cli.search import format_result
from mmrag.pipelines.terminal import StreamSafe, clip, terminal_safe

BLINK = "\x1b[5mblink\x1b[0m"
OSC8 = "\x1b]8;;https://evil.example/\x07Click here\x1b]8;;\x07"


@pytest.mark.parametrize("raw, shown", [
    (f"a {BLINK} b", "a blink b"),
    (OSC8, "Click here"),
    ("\x1b]8;;https://evil.example/\x1b\\Click\x1b]8;;\x1b\\", "Click"),   # ST-terminated
    ("\x1b]52;c;aGVsbG8=\x07copied", "copied"),                              # clipboard write
    ("\x9b31mred", "red"),                                                   # 8-bit CSI
    ("cut \x1b[3", "cut "),                                                  # truncated CSI
    ("unterminated \x1b]8;;https://evil.example/", "unterminated "),        # OSC to the end
    ("over\rwrite\bx\x07", "over\ufffdwrite\ufffdx\ufffd"),
    ("rtl \u202eevil", "rtl \ufffdevil"),
    ("tab\tnewline\n", "tab\tnewline\n"),
    ("plain ünïcode ✓", "plain ünïcode ✓"),
])
def test_terminal_safe(raw, shown):
    assert terminal_safe(raw) == shown
    assert "\x1b" not in terminal_safe(raw) and "\x9b" not in terminal_safe(raw)


def test_clip_never_splits_a_sequence():
    text = "x" * 10 + OSC8 + "y" * 10
    for width in range(1, 40):
        out = clip(text, width)
        assert len(out) <= width and "\x1b" not in out and "evil" not in out
    assert clip("a\nb\tc", 10) == "a b c"


def test_stream_safe_removes_sequences_split_across_pieces():
    pieces = ["hi \x1b", "]8;;https://e", "vil\x07Cl", "ick\x1b]8;;", "\x07 and \x1b[", "5mblink\x1b[0", "m end\x1b"]
    screen = StreamSafe()
    assert "".join(screen.feed(p) for p in pieces) + screen.flush() == "hi Click and blink end"


class _Hit:
    target = "text"
    rank = 1
    score = 0.5
    similarity = 0.5
    article_title = f"Title {BLINK}"
    section = "Sec"
    text = f"see {OSC8} now"
    image_status = None
    src_url = None
    generated_caption = None
    caption = None


class _Result:
    image = None
    query = "q\x1b[2J"
    mode = "cosine"
    reranker = "none"
    tables = {"text": "chunks"}
    softmax_exact = {}
    candidates = {"text": 1}

    def hits_for(self, target):
        return [_Hit()]

    def to_dict(self):
        return {"hits": [{"text": _Hit.text}]}


def test_search_table_is_neutralised_and_json_keeps_the_exact_text():
    shown = format_result(_Result())
    assert "\x1b" not in shown and "Click here" in shown and "Title blink" in shown
    encoded = json.dumps(_Result().to_dict())
    assert "\\u001b]8;;https://evil.example/\\u0007" in encoded and json.loads(encoded)["hits"][0]["text"] == _Hit.text
