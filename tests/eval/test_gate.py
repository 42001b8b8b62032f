"""The CI gate: significant drops beyond the tolerance fail, noise and identical reruns pass, fingerprints guard."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmrag.eval.gate import FingerprintMismatch, GateError, check_gate, classify, make_baseline, parse_metric_spec
from mmrag.eval.results import load_run, write_run
from mmrag.cli import app
from tests.eval.fakes import fake_result

pytestmark = pytest.mark.slow  # ranx compiles its numba kernels on first use
runner = CliRunner()
GOOD = [1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0]


def run_dir(tmp_path, values, run_id, **kwargs):
    return write_run(fake_result(values, run_id=run_id, **kwargs), tmp_path / "runs")


def test_classify():
    assert classify(-0.3, True, tolerance=0.02) == "FAIL"
    assert classify(-0.3, False, tolerance=0.02) == "drop, not significant"
    assert classify(-0.01, True, tolerance=0.02) == "drop within tolerance"
    assert classify(0.3, True, tolerance=0.02) == "improved"
    assert classify(0.0, False, tolerance=0.02) == "ok"
    assert parse_metric_spec("image:mrr") == ("image", "mrr")
    with pytest.raises(GateError):
        parse_metric_spec("audio:mrr")


def test_gate_fails_on_a_significant_drop_and_passes_an_identical_rerun(tmp_path):
    baseline = make_baseline(load_run(run_dir(tmp_path, GOOD, "base")))
    worse = load_run(run_dir(tmp_path, [v - 0.5 for v in GOOD], "worse"))
    result = check_gate(worse, baseline, ["recall@10"], tolerance=0.02)
    assert result.failed and result.rows[0]["status"] == "FAIL" and result.rows[0]["p_value"] < 0.05
    same = load_run(run_dir(tmp_path, GOOD, "same"))
    result = check_gate(same, baseline, ["recall@10", "text:mrr"])
    assert not result.failed and {r["status"] for r in result.rows} == {"ok"} and {r["p_value"] for r in result.rows} == {1.0}


def test_one_query_dropping_is_not_significant(tmp_path):
    baseline = make_baseline(load_run(run_dir(tmp_path, GOOD, "base")))
    one = load_run(run_dir(tmp_path, GOOD[:-1] + [0.0], "one"))
    result = check_gate(one, baseline, ["recall@10"], tolerance=0.02)
    assert not result.failed and result.rows[0]["status"] == "drop, not significant"


def test_fingerprint_mismatch_is_refused(tmp_path):
    baseline = make_baseline(load_run(run_dir(tmp_path, GOOD, "base")))
    other_corpus = load_run(run_dir(tmp_path, GOOD, "other", corpus="d" * 64))
    with pytest.raises(FingerprintMismatch, match="corpus differs"):
        check_gate(other_corpus, baseline, ["recall@10"])
    other_set = load_run(run_dir(tmp_path, GOOD + [1.0], "bigger"))
    with pytest.raises(FingerprintMismatch, match="eval set differs"):
        check_gate(other_set, baseline, ["recall@10"])
    with pytest.raises(GateError, match="not in the run"):
        check_gate(load_run(run_dir(tmp_path, GOOD, "same")), baseline, ["recall@20"])


def test_gate_and_baseline_commands(tmp_path):
    base_dir = run_dir(tmp_path, GOOD, "base")
    baseline_file = tmp_path / "baselines" / "b.json"
    result = runner.invoke(app, ["eval", "baseline", "--run", str(base_dir), "--out", str(baseline_file)])
    assert result.exit_code == 0, result.output
    stored = json.loads(baseline_file.read_text())
    assert stored["format"] == "mmrag-eval-baseline/1" and len(stored["per_query"]) == len(GOOD)
    assert {"query_id", "target", "recall@10"} <= set(stored["per_query"][0])

    worse = run_dir(tmp_path, [v - 0.5 for v in GOOD], "worse")
    result = runner.invoke(app, ["eval", "gate", "--run", str(worse), "--baseline", str(baseline_file),
                                 "--metric", "recall@10", "--metric", "mrr", "--tolerance", "0.02"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "gate FAILED" in result.output and "recall@10" in result.output
    same = run_dir(tmp_path, GOOD, "same")
    result = runner.invoke(app, ["eval", "gate", "--run", str(same), "--baseline", str(baseline_file),
                                 "--metric", "recall@10", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["failed"] is False
    other = run_dir(tmp_path, GOOD, "other", corpus="d" * 64)
    result = runner.invoke(app, ["eval", "gate", "--run", str(other), "--baseline", str(baseline_file),
                                 "--metric", "recall@10"])
    assert result.exit_code == 2 and "refusing to compare: the corpus differs" in result.output
    result = runner.invoke(app, ["eval", "gate", "--run", str(tmp_path), "--baseline", str(baseline_file),
                                 "--metric", "recall@10"])
    assert result.exit_code == 2 and "not an eval run directory" in result.output


def test_gate_markdown_lists_the_worst_regressed_queries_of_a_failing_gate(tmp_path):
    from mmrag.eval.diff import worst_regressions
    from mmrag.eval.gate import gate_markdown

    baseline = make_baseline(load_run(run_dir(tmp_path, GOOD, "base")))
    worse = load_run(run_dir(tmp_path, [v - 0.5 for v in GOOD[:-2]] + GOOD[-2:], "worse"))
    result = check_gate(worse, baseline, ["text:recall@10"], tolerance=0.02)
    assert result.failed
    plain = gate_markdown(result, run_id="worse", baseline="b.json")
    assert "Worst regressed queries" not in plain
    regressions = {"text:recall@10": worst_regressions(baseline, worse, "text:recall@10", n=3), "text:mrr": []}
    md = gate_markdown(result, run_id="worse", baseline="b.json", regressions=regressions)
    assert md.startswith(plain) and "## Worst regressed queries" in md
    section = md.split("## Worst regressed queries", 1)[1]
    assert "**text:recall@10** (baseline → run):" in section and "no query got worse on it" in section
    table = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(table) == 3
    for line, row in zip(table, regressions["text:recall@10"]):
        assert line.startswith(f"| `{row['query_id']}` | text | {row['a']:.3f} | {row['b']:.3f} | {row['delta']:+.3f} |")
