"""The HTML report: pure building blocks, autoescaping, and a real headless browser (Debian's chromium + Playwright)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrag.eval.results import append_history, history_row, load_run, write_run
from mmrag.reports.report import (
    answer_table,
    collect_report_data,
    metric_table,
    render_report,
    significance_marker,
    sweep_figures,
    write_report,
)

from tests.eval.fakes import fake_result

INJECTED = '<script>window.__injected = 1; document.title = "pwned";</script>'
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8ffff3f0005fe02fea73581e40000000049454e44ae426082"
)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _index_db(path: Path) -> None:
    import lancedb

    db = lancedb.connect(str(path))
    db.create_table("image_blobs", pa.table({"sha256": ["s" * 64], "thumbnail_png": pa.array([PNG_1PX], pa.binary())}))
    db.create_table("documents", pa.table({
        "url": ["file:///x/a.html", "http://bad.example/b"], "status": ["ok", "fetch_error"],
        "error": [None, "HTTP 500 <b>boom</b>"], "http_status": pa.array([200, 500], pa.int32())}))
    db.create_table("images__minilm", pa.table({
        "doc_url": ["file:///x/a.html"], "src_url": ["file:///x/missing.png"], "status": ["not_found"],
        "error": ["no such file"], "http_status": pa.array([None], pa.int32())}))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A sweep-like run directory with an injected <script> chunk, an image hit, answers, history and a failing index."""
    db = tmp_path / "db"
    _index_db(db)
    result = fake_result([1.0, 0.0, 1.0, 0.5, 1.0, 0.0], run_id="sweep-1")
    result.setting["tables"]["image"] = "images__minilm"
    result.hits[0]["text"] = f"before {INJECTED} after"
    result.hits.append({**result.hits[0], "target": "image", "rank": 1, "id": "img1", "text": "a caption",
                        "image_sha256": "s" * 64, "src_url": "file:///x/fig.png", "relevant": True})
    out = write_run(result, tmp_path / "runs", db_uri=str(db), tag_versions=False)
    manifest = json.loads((out / "run.json").read_text())
    append_history(str(db), history_row(manifest, result.summary["overall"], out))
    rows = [{"setting_id": f"k={k},temperature={t}", "mode": "softmax", "text_k": k, "text_temperature": t,
             "text_threshold": th, "text_recall@1": 0.1 * k * t, "text_recall@5": 0.2 * k * t + th,
             "text_recall@10": 0.3 * k * t, "text_mrr": 0.5}
            for k in (3, 5) for t in (0.1, 0.5) for th in (0.0, 0.01)]
    pq.write_table(pa.Table.from_pylist(rows), out / "sweep.parquet")
    (out / "sweep.json").write_text(json.dumps({
        "primary_metric": "text_recall@5", "best_setting_id": rows[-1]["setting_id"],
        "setting_columns": ["mode", "text_k", "text_temperature", "text_threshold"],
        "best": [{"metric": "text_recall@5", "setting_id": rows[-1]["setting_id"], "value": 0.51, "wins": 3,
                  "losses": 0, "ties": 4}]}))
    answers = [{"query_id": e.id, "llm": llm, "query": e.query, "answer": f"{llm} says {INJECTED}" if i == 0 else "ok",
                "error": "timeout" if (llm == "b" and i == 1) else None, "latency_s": 1.5, "rouge_l": 0.4,
                "tokens_in": 100, "tokens_out": 20} for i, e in enumerate(result.entries) for llm in ("a", "b")]
    pq.write_table(pa.Table.from_pylist(answers), out / "answers.parquet")
    return out


def test_significance_marker():
    assert significance_marker(0.1, 0.01) == "▲"
    assert significance_marker(-0.1, 0.01) == "▼"
    assert significance_marker(0.1, 0.5) == "·"
    assert significance_marker(0.0, 1.0) == ""


def test_metric_table_marks_a_significant_drop_against_the_baseline():
    base = fake_result([1.0] * 12).per_query
    worse = fake_result([0.0] * 11 + [1.0]).per_query
    table = metric_table(fake_result([0.0] * 11 + [1.0]).aggregates, ["recall@10"], per_query=worse, baseline_per_query=base)
    overall = next(r for r in table["rows"] if r["kind"] == "all")
    assert table["has_baseline"] and overall["cells"][0]["marker"] == "▼"


def test_sweep_figures_and_answer_table():
    rows = [{"setting_id": str(i), "mode": "softmax", "text_k": k, "text_temperature": t, "text_threshold": th,
             "text_recall@5": 0.5, "text_recall@10": 0.6} for i, (k, t, th) in enumerate([(3, 0.1, 0), (5, 0.1, 0.01), (3, 0.5, 0)])]
    titles = [f["title"] for f in sweep_figures(rows)]
    assert titles == ["k × temperature", "threshold curves", "recall@k curves"]
    assert sweep_figures([]) == []
    table = answer_table([{"query_id": "q", "llm": "a", "answer": "x", "error": None, "latency_s": 2.0},
                          {"query_id": "q", "llm": "b", "answer": "", "error": "boom", "latency_s": None}])
    assert table["models"] == ["a", "b"] and table["failures"] == {"a": 0, "b": 1} and table["means"]["a"]["latency_s"] == 2.0


def test_report_escapes_article_text_and_collects_everything(run_dir):
    data = collect_report_data(run_dir)
    assert data["thumbnails"] and len(data["failures"]) == 2 and len(data["history"]) == 1
    html = render_report(data, plotly_js="/* plotly */")
    assert INJECTED not in html
    assert "&lt;script&gt;window.__injected = 1;" in html
    assert "HTTP 500 &lt;b&gt;boom&lt;/b&gt;" in html
    assert "data:image/png;base64," in html and "sweep-1" in html


def test_report_opens_offline_in_headless_chromium(run_dir, tmp_path):
    """Plots render, the drill-down expands, injected script text shows as text and never runs; screenshot saved."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    if not Path(CHROMIUM).is_file() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    path = write_report(run_dir)
    assert path == run_dir / "index.html"
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 2000})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort())
        page.goto(path.as_uri())
        page.wait_for_selector(".main-svg", timeout=30_000)
        assert page.locator(".js-plotly-plot").count() >= 3  # heatmap, threshold curves, recall@k (+ history)
        first = page.locator("details.query").first
        assert first.evaluate("d => d.open") is False
        first.locator("summary").click()
        assert first.evaluate("d => d.open") is True
        assert INJECTED in first.inner_text()
        assert page.evaluate("window.__injected") is None and page.title() != "pwned"
        page.click("#expand-all")
        assert page.locator("details.query[open]").count() == page.locator("details.query").count()
        thumb = page.locator("div.thumb").first
        assert thumb.evaluate("d => getComputedStyle(d).backgroundImage").startswith('url("data:image/png;base64,')
        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")


def test_answer_section_shows_judged_metrics_and_judge_failures(run_dir):
    """answers.parquet as `mmrag eval answers --judge` writes it: judged columns in the tables, the judge named, failures shown."""
    from mmrag.eval.answers import write_answers

    judge = "llamacpp:qwen2.5-coder-0.5b@http://127.0.0.1:40000/v1"
    rows = [{"query_id": "q-000", "llm": "a", "query": "question 0", "answer": "ok", "latency_s": 1.0, "faithfulness": 0.5,
             "answer_relevancy": 0.9, "judge": judge, "judge_s": 30.0, "judge_tokens_in": 900, "judge_tokens_out": 80},
            {"query_id": "q-001", "llm": "a", "query": "question 1", "answer": "ok", "latency_s": 3.0, "faithfulness": None,
             "answer_relevancy": 0.7, "judge": judge, "judge_s": 50.0,
             "judge_error": "faithfulness: the judge's output did not fit the schema after 2 attempt(s): <bad>"}]
    write_answers(rows, run_dir / "answers.parquet")
    data = collect_report_data(run_dir)
    table = answer_table(data["answers"])
    assert {"faithfulness", "answer_relevancy", "judge_s", "judge_tokens_in", "latency_s"} <= set(table["score_columns"])
    assert "multimodal_faithfulness" not in table["score_columns"]  # all null: not a column
    assert table["judges"] == [judge] and table["judge_failures"] == {"a": 1}
    assert table["means"]["a"]["faithfulness"] == 0.5 and table["means"]["a"]["judge_s"] == 40.0
    html = render_report(data, plotly_js="/* plotly */")
    assert f"judged by {judge}" in html and "<th>judge failures</th>" in html and "<th>faithfulness</th>" in html
    assert "judge: faithfulness: the judge&#39;s output did not fit the schema after 2 attempt(s): &lt;bad&gt;" in html


@pytest.fixture(scope="module")
def sample(tmp_path_factory, prefect_harness, minilm):
    """The sample index with its k=10 and k=1 runs (shared with test_diff / test_export through the session temp folder)."""
    from tests.eval.sample_runs import sample_runs

    return sample_runs(tmp_path_factory, embedder=minilm)


@pytest.mark.slow
def test_report_against_a_baseline_lists_the_regressed_queries_with_both_sides_hits(sample):
    import re

    from mmrag.eval.diff import query_diff

    data = collect_report_data(sample.k1, baseline_dir=sample.k10)
    assert data["baseline_hits"] and data["baseline"].run_id == "sample-k10"
    html = render_report(data, plotly_js="/* plotly */")
    assert '<section id="regressed">' in html and "<h2>Regressed queries</h2>" in html
    base, run = load_run(sample.k10), load_run(sample.k1)
    for target in ("text", "image"):
        expected = query_diff(base.per_query, run.per_query, metric="recall@5", target=target)
        expected = expected[expected["delta"] < 0]
        if expected.empty:
            continue
        assert f"{target}: {len(expected)} quer" in html and "worse on recall@5" in html
        listed = re.findall(rf'<tr class="regressed-query" id="reg-{target}-([^"]+)">', html)
        assert listed == list(expected["query_id"])[:20]  # worst first
    row = html.split('<tr class="regressed-query"', 2)[1]
    cells = row.split('<td class="side">')
    assert len(cells) == 3 and cells[1].count('<div class="hit') == 3 and cells[2].count('<div class="hit') == 1
    assert "relevant" in cells[1]  # the k=10 side had a relevant hit in its top 3 the k=1 side lost
    no_baseline = render_report(collect_report_data(sample.k1), plotly_js="/* plotly */")
    assert '<section id="regressed">' not in no_baseline


def test_answer_table_shows_the_judge_spread_beside_the_mean():
    answers = [{"query_id": f"q{i}", "llm": "a", "query": "?", "answer": "x", "error": None, "faithfulness": f,
                "faithfulness_std": sd, "judge": "openai:j", "judge_repeats": 3} for i, (f, sd) in enumerate([(0.5, 0.25), (1.0, 0.0)])]
    table = answer_table(answers)
    assert "faithfulness_std" not in table["score_columns"] and table["spread"] == {"faithfulness": "faithfulness_std"}
    assert table["means"]["a"]["faithfulness_std"] == 0.125
    result = fake_result([1.0, 0.0])
    html = render_report({"run_dir": "r", "manifest": {"run_id": "r", "metrics": ["recall@10"], "setting": {}, "table_versions": {}},
                          "per_query": result.per_query, "aggregates": result.aggregates, "hits": [], "queries": [],
                          "answers": answers, "thumbnails": {}}, plotly_js="")
    assert "faithfulness 0.500 ± 0.250;" in html and "± 0.125</span>" in html and "judged metrics are the mean" in html
