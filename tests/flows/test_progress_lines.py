"""Progress in every mode: plain lines on stderr (done/total, rate, ETA) when there are no bars, nothing on
stdout; sub-steps of one stage share its counter; batches sized by time; per-stage rates in the summary."""

from __future__ import annotations

import io
import time

import pytest

from mmrag.flows.index import BatchSizer
from mmrag.pipelines.summary import IndexSummary
from mmrag.progress import Progress, quiet_libraries


def test_plain_lines_report_done_total_rate_and_eta():
    out = io.StringIO()
    progress = Progress(enabled=False, log_every_s=0.2, stream=out)
    bar = progress.bar("embed chunks", total=100)
    bar.advance(25)
    lines = progress.report_due(time.monotonic() + 0.3)
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("mmrag: embed chunks: 25/100 (25%)") and "/s" in line and "ETA" in line
    assert progress.report_due(time.monotonic() + 0.3) == []  # not again before the interval
    bar.close()
    assert progress.report_due(time.monotonic() + 10) == []  # a closed stage says nothing more
    progress.stop()
    assert line in out.getvalue()


def test_ticker_writes_without_advances_and_silent_when_off():
    out = io.StringIO()
    progress = Progress(enabled=False, log_every_s=0.2, stream=out)
    bar = progress.bar("ocr images", total=10)
    time.sleep(1.6)  # no item finished: the ticker still reports the stage
    bar.close()
    progress.stop()
    assert "ocr images: 0/10" in out.getvalue()

    silent = io.StringIO()
    off = Progress(enabled=False, log_every_s=0, stream=silent)
    off.bar("pages", total=5).advance(5)
    assert off.report_due(time.monotonic() + 100) == [] and silent.getvalue() == ""


def test_nested_bars_add_to_the_stage_counter():
    progress = Progress(enabled=False, log_every_s=30, stream=io.StringIO())
    outer = progress.bar("embed chunks", total=10)
    inner = progress.within(outer).bar("embed chunks", total=4)
    inner.advance(4)
    inner.close()
    progress.within(outer).bar("embed chunks", total=6).advance(6)
    assert outer.done == 10 and outer._owner is not None
    outer.close()
    progress.stop()


def test_batch_sizer_follows_the_time_per_page():
    sizer = BatchSizer(max_pages=64, target_s=10.0)
    assert sizer.next_size() == 1
    sizer.started -= 2.0  # one page took 2 s
    sizer.done(1)
    assert sizer.next_size() == 5
    sizer.pages_done = 1000  # very fast pages: capped by page_batch
    assert sizer.next_size() == 64


def test_stage_rates_in_the_summary():
    summary = IndexSummary()
    with summary.timed("embed"):
        time.sleep(0.05)
    summary.count_stage("embed", 10)
    assert 0 < summary.stage_rate["embed"] <= 10 / 0.05
    assert summary.stage_items == {"embed": 10}
    assert "/s)" in summary.to_text()
    assert IndexSummary(**summary.to_dict()).stage_rate == summary.stage_rate


def test_quiet_libraries_filters_prefect_info_on_the_console(monkeypatch):
    import logging

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        quiet_libraries(verbose=False)
        logging.getLogger("prefect.task_runs").info("Finished in state Completed()")
        logging.getLogger("prefect.task_runs").warning("a task failed")
    finally:
        root.removeHandler(handler)
    assert "Completed" not in stream.getvalue() and "a task failed" in stream.getvalue()
    import os

    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_index_run_leaves_no_progress_ticker_behind(tmp_path, monkeypatch):
    """The plain-line ticker stops on any exit: a run that failed must not go on writing 'pages: …' lines into
    whatever stderr is later (it did, 13 minutes on, into another command's one-line error)."""
    import threading

    from mmrag.flows import index as index_flow
    from tests.flows.test_first_index import make_config, make_site

    site, _ = make_site(tmp_path / "site", pages=2, images_per_page=0, paragraphs=2)
    cfg = make_config(tmp_path, **{"images.ocr": False, "progress": False, "ops.progress_log_s": 0.2})

    def fails(*args, **kwargs):
        raise RuntimeError("a stage failed")

    monkeypatch.setattr(index_flow, "_retire_dropped", fails)
    with pytest.raises(Exception, match="a stage failed"):
        index_flow.run_index([str(site)], cfg)
    time.sleep(1.2)  # the ticker wakes at least once a second
    assert not [t for t in threading.enumerate() if t.name == "mmrag-progress" and t.is_alive()]
