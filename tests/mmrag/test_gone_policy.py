"""What a re-indexed page that turned (near-)empty does to what was stored for it (README: What is stored).

Decision: a page that parses to nothing (no text, no image) is a failure (``empty``) and keeps its stored
chunks, like a 5xx; a page that still has text but none long enough to chunk has *changed*: it is indexed
as it is now, so its old chunks are planned for deletion and its row records 0 chunks.
"""

from __future__ import annotations

from mmrag.config import MmragConfig
from mmrag.flows.index import parse_page
from mmrag.pipelines.incremental import plan_chunks
from mmrag.pipelines.sources import PageTarget
from mmrag.records import FetchResult

URL = "https://blog.example/post"


def _parse(html: str, minilm):
    cfg = MmragConfig.model_validate({"chunking": {"strategy": "paragraph"}})
    fetched = FetchResult(url=URL, final_url=URL, status="ok", body=html.encode(), content_type="text/html")
    return parse_page(PageTarget(URL, None, URL), fetched, minilm, cfg)


def test_an_empty_page_fails_and_keeps_its_chunks(minilm):
    page = _parse("<html><body></body></html>", minilm)
    assert page.doc is None and page.status == "empty"  # not among the re-parsed pages: no chunk plan, nothing deleted


def test_a_near_empty_page_is_indexed_as_it_is_and_loses_its_old_chunks(minilm):
    page = _parse("<html><head><title>Moved</title></head><body><article><p>Moved.</p></article></body></html>", minilm)
    assert page.doc is not None and page.status == "ok" and page.chunks == []
    stored = {URL: {"old-1": {"content_hash": "a"}, "old-2": {"content_hash": "b"}}}
    plan = plan_chunks(page.chunks, stored)
    assert plan.stale == {"old-1", "old-2"} and plan.new == []
