"""CI gate: fail when a gated metric dropped by more than a tolerance *and* the drop is significant.

A baseline file (``eval/baselines/NAME.json``, format ``mmrag-eval-baseline/1``) is made from a run
directory by :func:`make_baseline`: fingerprints, setting, aggregates and the per-query values
the paired test needs. :func:`check_gate` compares a run with it:

* runs over a different corpus or eval set are refused (:class:`FingerprintMismatch`): their
  numbers are not comparable;
* for each gated metric and target, ``delta = run − baseline`` (means over the queries both
  scored); the gate fails when ``−delta > tolerance`` and ranx's paired test over the per-query
  values gives ``p < max_p``. A drop that is large but not significant (too few queries, noise)
  is reported and does not fail; neither does a significant drop within the tolerance.

Metric specs: ``recall@5`` gates every target both runs scored; ``text:recall@5`` or
``image:recall@5`` one target.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrag.eval.results import RunRecord, git_commit, load_run
from mmrag.eval.significance import compare_per_query

BASELINE_FORMAT = "mmrag-eval-baseline/1"
PER_QUERY_KEYS = ("query_id", "kind", "target", "n_relevant")


class FingerprintMismatch(ValueError):
    """The run and the baseline were made over different corpora or eval sets."""


class GateError(ValueError):
    """The gate cannot be evaluated as asked (unknown metric, missing target, bad baseline file)."""


@dataclass
class GateResult:
    """Rows of the gate table and whether the gate failed."""

    rows: list[dict[str, Any]]
    tolerance: float
    max_p: float
    stat_test: str

    @property
    def failed(self) -> bool:
        """Whether any gated metric failed."""
        return any(r["status"] == "FAIL" for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"failed": self.failed, "tolerance": self.tolerance, "max_p": self.max_p, "stat_test": self.stat_test,
                "rows": self.rows}


def make_baseline(run: RunRecord) -> dict[str, Any]:
    """A baseline document from a run: provenance, fingerprints, setting, aggregates and per-query metric values."""
    m = run.manifest
    metrics = list(m["metrics"])
    return {
        "format": BASELINE_FORMAT,
        "run_id": m["run_id"],
        "created_at": m["created_at"],
        "commit": m.get("commit", "unknown"),
        "baseline_commit": git_commit(),
        "corpus_fingerprint": m["corpus_fingerprint"],
        "evalset_fingerprint": m["evalset_fingerprint"],
        "setting": m["setting"],
        "metrics": metrics,
        "aggregates": run.aggregates,
        "per_query": [{**{k: r.get(k) for k in PER_QUERY_KEYS}, **{k: r[k] for k in metrics}} for r in run.per_query],
    }


def write_baseline(run_dir: str | Path, out: str | Path) -> Path:
    """Write the baseline of the run at ``run_dir`` to ``out`` (JSON); returns ``out``."""
    baseline = make_baseline(load_run(run_dir))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(baseline, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline file (raises :class:`GateError` when missing or not a baseline)."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"baseline not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GateError(f"baseline {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise GateError(f"{path} is not a baseline file (expected format {BASELINE_FORMAT})")
    return data


def check_fingerprints(manifest: Mapping[str, Any], baseline: Mapping[str, Any]) -> None:
    """Raise :class:`FingerprintMismatch` unless run and baseline share corpus and eval-set fingerprints."""
    for key, what in (("corpus_fingerprint", "corpus"), ("evalset_fingerprint", "eval set")):
        if manifest.get(key) != baseline.get(key):
            raise FingerprintMismatch(
                f"refusing to compare: the {what} differs from the baseline's ({key} {str(manifest.get(key))[:12]}… "
                f"vs {str(baseline.get(key))[:12]}…); make a new baseline with `mmrag eval baseline`"
            )


def parse_metric_spec(spec: str) -> tuple[str | None, str]:
    """``"recall@5"`` -> ``(None, "recall@5")``; ``"text:recall@5"`` -> ``("text", "recall@5")``."""
    target, sep, metric = spec.partition(":")
    if not sep:
        return None, spec.strip()
    target = target.strip()
    if target not in ("text", "image"):
        raise GateError(f"--metric {spec!r}: target must be text or image")
    return target, metric.strip()


def classify(delta: float, significant: bool, *, tolerance: float) -> str:
    """Status of one gated metric: ``FAIL``, ``drop`` (not significant or within tolerance), ``ok`` or ``improved``."""
    if -delta > tolerance and significant:
        return "FAIL"
    if -delta > tolerance:
        return "drop, not significant"
    if delta < 0 and significant:
        return "drop within tolerance"
    if delta > tolerance and significant:
        return "improved"
    return "ok"


def check_gate(
    run: RunRecord,
    baseline: Mapping[str, Any],
    metrics: Sequence[str],
    *,
    tolerance: float = 0.02,
    max_p: float = 0.05,
    stat_test: str = "student",
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> GateResult:
    """Compare ``run`` with ``baseline`` on ``metrics`` (specs, see the module docstring); one row per (target, metric).

    Raises :class:`FingerprintMismatch` for different corpora or eval sets, :class:`GateError` for
    a metric or target one side lacks.
    """
    check_fingerprints(run.manifest, baseline)
    if not metrics:
        raise GateError("give at least one --metric")
    rows: list[dict[str, Any]] = []
    run_targets = {r["target"] for r in run.per_query}
    base_targets = {r["target"] for r in baseline["per_query"]}
    for spec in metrics:
        target, metric = parse_metric_spec(spec)
        for side, names in (("run", run.manifest["metrics"]), ("baseline", baseline["metrics"])):
            if metric not in names:
                raise GateError(f"metric {metric!r} is not in the {side} (it has {', '.join(names)})")
        targets = [target] if target else sorted(run_targets & base_targets)
        for tgt in targets:
            if tgt not in run_targets or tgt not in base_targets:
                raise GateError(f"target {tgt!r} was not scored in both the run and the baseline")
        compared = compare_per_query(
            baseline["per_query"], run.per_query, [metric], targets=targets, stat_test=stat_test, max_p=max_p,
            n_permutations=n_permutations, random_seed=random_seed,
        )
        if not compared:
            raise GateError(f"no query was scored on {metric} in both the run and the baseline")
        for row in compared:
            rows.append(
                {
                    "target": row["target"],
                    "metric": metric,
                    "n_queries": row["n_queries"],
                    "baseline": row["control"],
                    "run": row["treatment"],
                    "delta": row["delta"],
                    "p_value": row["p_value"],
                    "significant": row["significant"],
                    "worse": row["losses"],
                    "better": row["wins"],
                    "status": classify(row["delta"], row["significant"], tolerance=tolerance),
                }
            )
    return GateResult(rows=rows, tolerance=tolerance, max_p=max_p, stat_test=stat_test)


def format_gate_table(result: GateResult) -> str:
    """The gate rows as an aligned text table with a verdict line."""
    header = f"{'target':<7}{'metric':<14}{'baseline':>9}{'run':>9}{'delta':>9}{'p':>9}{'worse':>7}{'better':>7}  status"
    lines = [header]
    for r in result.rows:
        lines.append(
            f"{r['target']:<7}{r['metric']:<14}{r['baseline']:>9.4f}{r['run']:>9.4f}{r['delta']:>+9.4f}"
            f"{r['p_value']:>9.4f}{r['worse']:>7}{r['better']:>7}  {r['status']}"
        )
    verdict = "FAILED" if result.failed else "passed"
    lines.append(
        f"gate {verdict}: fails on a drop > {result.tolerance:g} with p < {result.max_p:g} "
        f"({'paired t-test' if result.stat_test == 'student' else 'Fisher randomization test'}, n = queries)"
    )
    return "\n".join(lines)


def _md_cell(text: Any, limit: int = 120) -> str:
    """``text`` as one markdown table cell: one line, pipes escaped, at most ``limit`` characters."""
    value = " ".join(str(text if text is not None else "").split()).replace("|", "\\|")
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


def regressions_markdown(regressions: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Markdown lines of a "Worst regressed queries" section: per failing metric spec (``text:recall@5``), its rows
    (:func:`mmrag.eval.diff.worst_regressions`: ``query_id, target, query, a, b, delta``), most negative delta first."""
    lines = ["", "## Worst regressed queries", ""]
    for spec, rows in regressions.items():
        lines.append(f"**{_md_cell(spec)}** (baseline → run):")
        lines.append("")
        if not rows:
            lines += ["no query got worse on it", ""]
            continue
        lines += ["| query | target | baseline | run | delta | text |", "|---|---|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| `{_md_cell(r['query_id'], 60)}` | {r['target']} | {r['a']:.3f} | {r['b']:.3f} | {r['delta']:+.3f} | "
                         f"{_md_cell(r.get('query'))} |")
        lines.append("")
    return lines


def gate_markdown(result: GateResult, *, run_id: str, baseline: str, report: str | None = None,
                  regressions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> str:
    """The gate rows as a markdown table with the verdict, for a Prefect artifact or a CI summary.

    ``regressions``: ``{metric spec: worst regressed query rows}`` (see :func:`regressions_markdown`), rendered
    under the table as a "Worst regressed queries" section when given (the scheduled gate passes it on failure).
    """
    verdict = "**FAILED**" if result.failed else "passed"
    lines = [
        f"# Gate {verdict}: run {run_id} vs baseline `{baseline}`",
        "",
        f"Fails on a drop > {result.tolerance:g} with p < {result.max_p:g} "
        f"({'paired t-test' if result.stat_test == 'student' else 'Fisher randomization test'}, n = queries)."
        + (f" Report: `{report}`" if report else ""),
        "",
        "| target | metric | queries | baseline | run | delta | p | worse | better | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.rows:
        status = f"**{r['status']}**" if r["status"] == "FAIL" else r["status"]
        lines.append(
            f"| {r['target']} | {r['metric']} | {r['n_queries']} | {r['baseline']:.4f} | {r['run']:.4f} | "
            f"{r['delta']:+.4f} | {r['p_value']:.4f} | {r['worse']} | {r['better']} | {status} |"
        )
    if regressions:
        lines += regressions_markdown(regressions)
    return "\n".join(lines)
