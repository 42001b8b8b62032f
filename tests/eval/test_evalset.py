"""Eval set files: schema validation with one error per bad line, extras kept, fingerprints."""

from __future__ import annotations

import json

import pytest

from mmrag.eval.evalset import EvalSetError, dump_evalset, evalset_fingerprint, load_evalset, parse_evalset
from tests.helpers import REPO_ROOT

GOOD = {
    "id": "q-001", "query": "How are chunks cut?", "query_image": None, "kind": "text",
    "relevant": [{"url": "posts/chunking/", "section": "Windows", "contains": "a verbatim span"}],
    "relevant_images": [{"image_url": "posts/chunking/figure.png"}],
    "reference_answer": "By windows.",
}


def lines(*objects) -> list[str]:
    return [o if isinstance(o, str) else json.dumps(o) for o in objects]


def test_valid_entries_keep_extra_keys_and_optional_fields():
    minimal = {"id": "q-002", "query": "Only a URL", "relevant": [{"url": "a.html"}]}
    entries = parse_evalset(lines({**GOOD, "difficulty": "hard"}, "", "# a comment", minimal))
    assert [e.id for e in entries] == ["q-001", "q-002"]
    assert entries[0].to_json()["difficulty"] == "hard"
    assert entries[0].targets == ["text", "image"]
    second = entries[1]
    assert second.kind == "text" and second.relevant[0].section is None and second.relevant[0].contains is None
    assert second.targets == ["text"] and second.reference_answer is None


def test_each_bad_line_gets_one_error_with_line_number_and_field():
    bad = lines(
        GOOD,
        {**GOOD, "id": "q-010", "relevant": [{"section": "no url"}]},
        "{not json",
        {**GOOD, "id": "q-011", "relevant": [], "relevant_images": []},
        {**GOOD},  # duplicate id
        {**GOOD, "id": "q-012", "query": ""},
    )
    with pytest.raises(EvalSetError) as info:
        parse_evalset(bad, source="set.jsonl")
    errors = info.value.errors
    assert len(errors) == 5, errors
    assert errors[0].startswith("set.jsonl:2: relevant.0.url: Field required")
    assert errors[1].startswith("set.jsonl:3: invalid JSON")
    assert errors[2].startswith("set.jsonl:4: ") and "at least one label" in errors[2]
    assert errors[3] == "set.jsonl:5: id: duplicate id 'q-001' (first on line 1)"
    assert errors[4].startswith("set.jsonl:6: query:")


def test_load_missing_or_empty_file(tmp_path):
    with pytest.raises(EvalSetError, match="not found"):
        load_evalset(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n# nothing\n")
    with pytest.raises(EvalSetError, match="no entries"):
        load_evalset(empty)


def test_fingerprint_ignores_order_and_formatting_but_not_content(tmp_path):
    other = {**GOOD, "id": "q-002", "query": "Another"}
    a = parse_evalset(lines(GOOD, other))
    b = parse_evalset([json.dumps(other, indent=None, separators=(", ", ": ")), json.dumps(GOOD, sort_keys=True)])
    assert evalset_fingerprint(a) == evalset_fingerprint(b)
    changed = parse_evalset(lines(GOOD, {**other, "relevant": [{"url": "b.html"}]}))
    assert evalset_fingerprint(changed) != evalset_fingerprint(a)
    path = dump_evalset(a, tmp_path / "out.jsonl")
    assert evalset_fingerprint(load_evalset(path)) == evalset_fingerprint(a)


def test_the_sample_eval_set_is_valid_and_mixed():
    entries = load_evalset(REPO_ROOT / "data" / "eval" / "sample.jsonl")
    kinds = {e.kind for e in entries}
    assert len(entries) >= 40 and {"text", "figure", "detail"} <= kinds
    assert all(e.reference_answer for e in entries)
    assert all(e.relevant_images for e in entries if e.kind == "figure")
