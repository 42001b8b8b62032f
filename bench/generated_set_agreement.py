"""generated_set_agreement: does a set written by `mmrag eval generate` rank retrieval settings like the hand-written one?

Indexes data/sample/ with the defaults (as `make run` / `make gate` do) into a temporary database,
generates an eval set from it with the embedded LLM through the CLI (`mmrag eval generate --json`:
seconds per question, candidates, kept, each filter's count), then evaluates one grid of retrieval
settings (search mode × chunking, through :func:`mmrag.eval.sweep.run_sweep`) on the hand-written
data/eval/sample.jsonl and on the generated set, and measures how well the two sets agree on the
order of the settings: Spearman's rho and Kendall's tau-b (scipy.stats) with their p-values, per
target and metric (recall@5, nDCG@10). Last, the LLM judge's spread: a few hand-written questions
are answered once with the embedded model and judged (faithfulness, answer relevancy) with
``eval.judge_repeats`` 3 at the default ``eval.judge_temperature`` / ``eval.judge_top_p`` (0.01 / 0.1,
ragas' own), at temperature 0.7 alone, and at 0.7 with top_p 1.0.

    .venv/bin/python -m bench.generated_set_agreement                       # n 24, 3 judged answers (~30-60 min on 2 cores)
    .venv/bin/python -m bench.generated_set_agreement --n 6 --judge-questions 1 --workdir /tmp/gsa   # a quick pass
    .venv/bin/python -m bench.generated_set_agreement --workdir /tmp/gsa --reuse-set   # again, without generating anew
    .venv/bin/python -m bench.generated_set_agreement --write-results       # also replace its section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench._run import ROOT, isolate_prefect
from bench.machine import machine_info
from bench.results import replace_section

HAND = ROOT / "data" / "eval" / "sample.jsonl"
SAMPLE = ROOT / "data" / "sample"
HEADING = "## generated_set_agreement"
LLM = "llamacpp:qwen2.5-coder-0.5b"
#: Chunkings of the grid (sweep keys); {} is the default chunking (paragraphs merged to 48 tokens, with context).
CHUNKINGS = {
    "default": {},
    "paragraph": {"chunking": "paragraph", "merge_min_tokens": 0, "context": "none"},
    "tokens-128": {"chunking": "tokens", "chunk_size": 128},
    "window-512": {"chunking": "window", "chunk_size": 512},
}
SEARCHES = {"cosine": {"mode": "cosine"}, "hybrid-linear": {"mode": "hybrid", "hybrid_fusion": "linear"},
            "hybrid-rrf": {"mode": "hybrid", "hybrid_fusion": "rrf"}}
COLUMNS = ("text_recall@5", "text_ndcg@10", "image_recall@5", "image_ndcg@10")
FILTERS = ("unparsed", "vague", "rewritten", "overlap", "duplicate", "unanswerable", "unresolved", "surplus", "llm_errors", "leakage")


def grid_points(k: int = 10) -> dict[str, dict[str, Any]]:
    """The settings compared, by a short name: every search mode over every chunking at ``k``, plus the seed preset (its own
    k, chunks and image surrogates)."""
    points = {f"{cname}/{sname}": {**chunking, **search, "k": k}
              for cname, chunking in CHUNKINGS.items() for sname, search in SEARCHES.items()}
    return {**points, "seed preset": {"preset": "seed"}}


def rank_agreement(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau-b (with p-values) between two metric vectors over the same settings.

    Settings missing on either side (None or NaN) are left out; with fewer than three pairs, or a side
    that is constant, the coefficients are None (undefined) rather than scipy's NaN.
    """
    from scipy import stats

    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and not math.isnan(x) and not math.isnan(y)]
    out: dict[str, Any] = {"n": len(pairs), "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return out
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    rho = stats.spearmanr(xs, ys)
    tau = stats.kendalltau(xs, ys)
    out.update(spearman=float(rho.statistic), spearman_p=float(rho.pvalue), kendall=float(tau.statistic), kendall_p=float(tau.pvalue))
    return out


def agreement_table(hand: Mapping[str, Mapping[str, Any]], generated: Mapping[str, Mapping[str, Any]],
                    columns: Sequence[str] = COLUMNS) -> list[dict[str, Any]]:
    """Per metric column: :func:`rank_agreement` over the settings both sweeps share, plus each set's best setting and
    where the other set ranks it (1 = best; ties share the better rank), and how many distinct values each set gave."""
    ids = [sid for sid in hand if sid in generated]
    out = []
    for column in columns:
        a = [hand[sid].get(column) for sid in ids]
        b = [generated[sid].get(column) for sid in ids]
        row = {"metric": column, **rank_agreement(a, b)}
        valid = [i for i in range(len(ids)) if a[i] is not None and b[i] is not None]
        for name, mine, other in (("hand", a, b), ("generated", b, a)):
            row[f"distinct_{name}"] = len({mine[i] for i in valid})
            if row[f"distinct_{name}"] > 1:  # else every setting ties: no best one
                best = max(valid, key=lambda i: mine[i])
                row[f"best_{name}"] = ids[best]
                row[f"best_{name}_rank_in_other"] = 1 + sum(other[i] > other[best] for i in valid)
                row[f"best_{name}_ties"] = sum(mine[i] == mine[best] for i in valid) - 1
        out.append(row)
    return out


# --------------------------------------------------------------------------- steps


def index_default(db: Path, raw: Path) -> float:
    """Index data/sample/ with the defaults into ``db`` (skipped when it exists); returns the seconds it took."""
    if db.is_dir():
        return 0.0
    from mmrag.config import load_config
    from mmrag.flows.index import run_index

    t0 = time.perf_counter()
    summary = run_index([str(SAMPLE)], load_config(None, {"store.db_uri": str(db), "store.raw_dir": str(raw), "progress": False}))
    print(f"  indexed {summary.pages_ok} pages in {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


def generate(db: Path, out: Path, n: int, seed: int, reuse: bool) -> dict[str, Any]:
    """Run `mmrag eval generate --json` (a fresh LLM cache unless ``reuse``); returns its summary with the process's wall time."""
    record = out.with_name(out.name + ".bench.json")
    if reuse and out.is_file() and record.is_file():
        print(f"  reusing {out}", flush=True)
        meta = json.loads(out.with_name(out.name + ".meta.json").read_text(encoding="utf-8"))
        return {**json.loads(record.read_text(encoding="utf-8")), "reused": True,
                "generated_at": (meta.get("runs") or [{}])[-1].get("created_at")}
    for stale in (out, out.with_name(out.name + ".meta.json"), out.with_name(out.name + ".llm-cache.json")):
        stale.unlink(missing_ok=True)
    cmd = [str(ROOT / ".venv" / "bin" / "mmrag"), "eval", "generate", "--db", str(db), "--out", str(out), "--n", str(n),
           "--seed", str(seed), "--llm", LLM, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mmrag eval generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = {**json.loads(proc.stdout), "wall_s": round(wall, 1), "command": " ".join(cmd[1:]),
               "log": [line for line in proc.stderr.splitlines() if line.startswith("candidate ")]}
    record.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def sweep(queries: Path, db: Path, raw: Path, points: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Evaluate the named ``points`` on ``queries`` with :func:`run_sweep` (missing chunk tables indexed once); returns
    ``{name: sweep row}`` (``setting_id``, ``n_<target>_queries``, ``<target>_<metric>``)."""
    from mmrag.config import load_config
    from mmrag.eval.evalset import load_evalset
    from mmrag.eval.sweep import run_sweep, setting_id
    from mmrag.flows.index import run_index

    base = load_config(None, {"store.db_uri": str(db), "store.raw_dir": str(raw), "progress": False, "eval.target": "both"})

    def index_group(cfg, missing):
        if missing:
            t0 = time.perf_counter()
            run_index([str(SAMPLE)], cfg)
            print(f"  indexed {cfg.chunking.key()} in {time.perf_counter() - t0:.0f} s", flush=True)

    result = run_sweep(load_evalset(queries), base, {}, queries_path=queries, points=list(points.values()),
                       index_group=index_group, log=lambda m: print(f"  {m}", flush=True))
    by_id = {row["setting_id"]: row for row in result.rows}
    return {name: by_id[setting_id(point)] for name, point in points.items()}


def parse_sampling(text: str) -> tuple[float, float]:
    """``TEMPERATURE:TOP_P`` (or ``TEMPERATURE``, top_p ragas' 0.1) -> the pair."""
    temperature, _, top_p = text.partition(":")
    return float(temperature), float(top_p or 0.1)


def judge_spread(db: Path, raw: Path, n_questions: int, sampling: Sequence[tuple[float, float]], repeats: int,
                 max_tokens: int, seed: int) -> dict[str, Any]:
    """Answer the first ``n_questions`` text questions of the hand-written set once (default retrieval, embedded LLM, seeded),
    then judge the same answers ``repeats`` times per metric at each (judge temperature, top_p) (no verdict cache)."""
    from mmrag.config import load_config
    from mmrag.eval.answers import generate_answer, judge_contexts
    from mmrag.eval.evalset import load_evalset
    from mmrag.eval.judge import judge_rows, parse_judge_spec
    from mmrag.eval.run import run_evaluation
    from mmrag.pipelines.embed import create_embedder
    from mmrag.pipelines.llm import make_backend

    cfg = load_config(None, {"store.db_uri": str(db), "store.raw_dir": str(raw), "progress": False, "eval.target": "text",
                             "llm.max_tokens": max_tokens, "llm.seed": seed})
    entries = [e for e in load_evalset(HAND) if e.kind == "text" and not e.query_image][:n_questions]
    result = run_evaluation(entries, cfg, queries_path=HAND)
    by_query: dict[str, list[dict[str, Any]]] = {}
    for h in result.hits:
        by_query.setdefault(h["query_id"], []).append(h)
    backend = make_backend(cfg.llm, LLM)
    answers = []
    for entry in entries:
        row = generate_answer(entry, by_query.get(entry.id, []), backend, cfg, llm=LLM)
        print(f"  answer {entry.id}: {row['latency_s']} s {row['error'] or ''}", flush=True)
        answers.append(row)
    contexts = judge_contexts(answers, result.hits)
    embed = create_embedder(cfg.embed).embed_texts
    spec = parse_judge_spec("llamacpp", cfg.llm)
    out: dict[str, Any] = {"questions": [e.id for e in entries], "answer_s": [r["latency_s"] for r in answers],
                           "answers": [r["answer"] for r in answers], "by_sampling": {}}
    for temperature, top_p in sampling:
        settings = cfg.eval.model_copy(update={"judge_repeats": repeats, "judge_temperature": temperature, "judge_top_p": top_p})
        rows = [dict(r) for r in answers]
        t0 = time.perf_counter()
        judge_rows(rows, contexts, [[] for _ in rows], spec=spec, llm_config=cfg.llm, settings=settings, embed=embed,
                   cache=None, log=lambda m: print(f"  T={temperature} top_p={top_p}: {m}", flush=True))
        out["by_sampling"][f"{temperature}:{top_p}"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "rows": [{k: r.get(k) for k in ("query_id", "faithfulness", "faithfulness_std", "answer_relevancy",
                                            "answer_relevancy_std", "judge_s", "judge_error")} for r in rows],
        }
    return out


def judge_stats(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """Over the judged answers: mean of the per-answer means, mean and max per-answer spread (std over the repeats), and
    how many answers got differing verdicts; failures counted separately."""
    means = [r[metric] for r in rows if r.get(metric) is not None]
    stds = [r[f"{metric}_std"] for r in rows if r.get(f"{metric}_std") is not None]
    return {"n": len(means), "failed": len(rows) - len(means), "mean": statistics.fmean(means) if means else None,
            "mean_std": statistics.fmean(stds) if stds else None, "max_std": max(stds) if stds else None,
            "differing": sum(s > 1e-9 for s in stds)}


# --------------------------------------------------------------------------- report


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 0.001 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def report(args: argparse.Namespace, gen: dict[str, Any], hand_rows: dict, gen_rows: dict, table: list[dict],
           judge: dict[str, Any] | None, elapsed: float, load: tuple[tuple[float, ...], tuple[float, ...]],
           index_s: float) -> str:
    """The Markdown section of bench/RESULTS.md."""
    kept = gen.get("kept") or 0
    per_candidate = gen["llm_s"] / gen["candidates"] if gen.get("candidates") else None
    lines = [HEADING, "",
             f"Command: `.venv/bin/python -m bench.generated_set_agreement --n {args.n} --judge-questions {args.judge_questions} "
             f"--judge-sampling {' '.join(args.judge_sampling)}"
             f"{f' --workdir {args.workdir}' if args.workdir else ''}{' --reuse-set' if args.reuse_set else ''}"
             f"{' --reuse-judge' if args.reuse_judge else ''}"
             f"{' --write-results' if args.write_results else ''}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s in all"
             + (f"; default index of data/sample {index_s:.0f} s" if index_s else "; the default index of --workdir reused")
             + ")", "",
             machine_info() + f"; load average at start {load[0][0]:.1f} / {load[0][1]:.1f} / {load[0][2]:.1f}, "
             f"at the end {load[1][0]:.1f} / {load[1][1]:.1f} / {load[1][2]:.1f} (2 cores shared with other jobs)", "",
             f"### Generation (`mmrag {gen['command']}`)", "",
             *([f"Reused (--reuse-set): the set and these figures are those of the run that generated it "
                f"({gen.get('generated_at')}), not of this one.", ""] if gen.get("reused") else []),
             f"{LLM} (the embedded default), seed {args.seed}. Requested {gen['requested']}, candidates {gen['candidates']}, "
             f"kept {kept} ({gen.get('text', 0)} text, {gen.get('figure', 0)} figure), {gen.get('surplus', 0)} more passed the "
             f"filters but were over n: survival {_f(gen.get('survival'))} of candidates ((kept + surplus) / candidates; kept "
             f"alone {_f(kept / gen['candidates'] if gen.get('candidates') else None)}). LLM {gen['llm_calls']} calls, {gen['llm_s']:.0f} s ({_f(per_candidate, 1)} s per candidate); "
             f"generate {gen['seconds']:.0f} s in all, {_f(gen.get('s_per_question'), 1)} s per kept question "
             f"(process wall {gen['wall_s']:.0f} s with model loads).", "",
             "| filter | " + " | ".join(FILTERS) + " |", "|---|" + "---:|" * len(FILTERS),
             "| count | " + " | ".join(str(gen.get(f, 0)) for f in FILTERS) + " |", "",
             "(rewritten: copied too much and was rewritten once, not a drop; surplus: survived but over n; "
             "leakage: kept questions found verbatim in the index.)", ""]
    lines += [f"{gen.get('no_reference_answer', '-')} of the {kept} kept questions have no reference answer (the model left "
              "out the `Answer:` line; no filter drops them, but answer metrics need one).", ""]
    if gen.get("log"):
        lines += ["The first 8 candidates written, kept or dropped (the CLI's log):", ""]
        lines += [f"- {line.split(': ', 1)[1] if ': ' in line else line}" for line in gen["log"][:8]] + [""]
    n_hand = next(iter(hand_rows.values()))
    n_gen = next(iter(gen_rows.values()))
    lines += ["### Sweep on both sets", "",
              f"{len(hand_rows)} settings (search mode × chunking at k 10, plus the seed preset; `default` is the default "
              "chunking, paragraphs merged to 48 tokens with title and section; hybrid-linear is the default search), `run_sweep` on "
              f"data/eval/sample.jsonl ({n_hand.get('n_text_queries', 0)} text, {n_hand.get('n_image_queries', 0)} image "
              f"queries scored) and on the generated set ({n_gen.get('n_text_queries', 0)} text, "
              f"{n_gen.get('n_image_queries', 0)} image).", "",
              "| setting | hand text r@5 | gen text r@5 | hand text nDCG@10 | gen text nDCG@10 | hand image r@5 | gen image r@5 "
              "| hand image nDCG@10 | gen image nDCG@10 |", "|---|" + "---:|" * 8]
    for name in sorted(hand_rows, key=lambda s: -(hand_rows[s].get("text_recall@5") or 0)):
        h, g = hand_rows[name], gen_rows.get(name, {})
        lines.append(f"| {name} | " + " | ".join(f"{_f(h.get(c))} | {_f(g.get(c))}" for c in COLUMNS) + " |")
    lines += ["", "Rank agreement of the settings between the two sets (scipy.stats; tau is tau-b, ties allowed):", "",
              "| metric | settings | distinct values hand / gen | Spearman rho | p | Kendall tau | p "
              "| best on hand set (its rank on generated) | best on generated (its rank on hand) |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|"]

    def best(row: Mapping[str, Any], name: str) -> str:
        if not row.get(f"best_{name}"):
            return "all tied"
        ties = row[f"best_{name}_ties"]
        return f"{row[f'best_{name}']} ({row[f'best_{name}_rank_in_other']}{f'; tied with {ties} more' if ties else ''})"

    for row in table:
        lines.append(f"| {row['metric']} | {row['n']} | {row['distinct_hand']} / {row['distinct_generated']} | {_f(row['spearman'])} "
                     f"| {_p(row['spearman_p'])} | {_f(row['kendall'])} | {_p(row['kendall_p'])} | {best(row, 'hand')} "
                     f"| {best(row, 'generated')} |")
    lines += ["", "rho / tau '-': undefined (a set gave every setting the same value)."]
    if judge:
        lines += ["", "### Judge spread", "",
                  *([f"Reused (--reuse-judge): {judge.get('command', 'the judge step of an earlier run of this bench')}.", ""]
                    if judge.get("reused") else []),
                  f"The first {len(judge['questions'])} text questions of data/eval/sample.jsonl "
                  f"({', '.join(judge['questions'])}), default retrieval, answered once by {LLM} (max_tokens "
                  f"{args.answer_tokens}, llm.seed {args.seed}; {', '.join(_f(s, 1) for s in judge['answer_s'])} s), then "
                  f"judged by the same model (`--judge llamacpp`, served on 127.0.0.1) with judge_repeats {args.judge_repeats} "
                  "at each eval.judge_temperature / eval.judge_top_p (0.01 / 0.1 are the defaults, ragas' own), no verdict "
                  "cache. mean: of the per-answer means; spread: sample std over the repeats per answer (mean and max over "
                  "answers); differing: answers whose repeats disagreed.", "",
                  "| judge temperature | top_p | metric | judged | failed | mean | mean spread | max spread | differing "
                  "| judge s per answer |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, data in judge["by_sampling"].items():
            temperature, top_p = key.split(":")
            per_answer = statistics.fmean([r["judge_s"] for r in data["rows"] if r.get("judge_s") is not None] or [0.0])
            for metric in ("faithfulness", "answer_relevancy"):
                s = judge_stats(data["rows"], metric)
                lines.append(f"| {temperature} | {top_p} | {metric} | {s['n']} | {s['failed']} | {_f(s['mean'])} | {_f(s['mean_std'])} "
                             f"| {_f(s['max_std'])} | {s['differing']} | {per_answer:.0f} |")
        errors = sorted({e for d in judge["by_sampling"].values() for r in d["rows"] if r.get("judge_error")
                         for e in [r["judge_error"][:160]]})
        if errors:
            lines += ["", "Judge errors (first of each): " + "; ".join(f"`{e}`" for e in errors[:4])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Index, generate, sweep both sets, judge; prints the section (and writes it with --write-results)."""
    from mmrag.progress import quiet_libraries

    quiet_libraries()  # before lance loads: its per-query deprecation warnings
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=24, help="questions to generate (the LLM is asked about 1.5x as many)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (also llm.seed of the judged answers)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the database and generated set here (reused when present)")
    parser.add_argument("--reuse-set", action="store_true", help="reuse the generated set of --workdir instead of generating anew")
    parser.add_argument("--reuse-judge", action="store_true",
                        help="reuse the judge step's results of --workdir (judge.json) instead of judging anew")
    parser.add_argument("--judge-questions", type=int, default=3, help="hand-written questions answered and judged (0: no judge step)")
    parser.add_argument("--judge-repeats", type=int, default=3, help="eval.judge_repeats of the judge step")
    parser.add_argument("--judge-sampling", nargs="+", default=["0.01:0.1", "0.7:0.1", "0.7:1.0"], metavar="T:TOP_P",
                        help="eval.judge_temperature:eval.judge_top_p pairs judged (0.01:0.1 is the default, ragas' own)")
    parser.add_argument("--answer-tokens", type=int, default=64, help="answer length budget (as the main job's answer step)")
    parser.add_argument("--write-results", action="store_true", help="replace this bench's section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    started = time.perf_counter()
    work = isolate_prefect()
    base = args.workdir or work
    base.mkdir(parents=True, exist_ok=True)
    db, raw, out = base / "lancedb", base / "raw", base / "generated.jsonl"
    print("[1/4] index data/sample (defaults)", flush=True)
    index_s = index_default(db, raw)
    print(f"[2/4] generate {args.n} questions with {LLM}", flush=True)
    gen = generate(db, out, args.n, args.seed, args.reuse_set)
    print(f"  kept {gen['kept']} of {gen['candidates']} candidates, {gen.get('s_per_question')} s per kept question", flush=True)
    kept_entries = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    gen["no_reference_answer"] = sum(not e.get("reference_answer") for e in kept_entries)
    print("[3/4] sweep on both sets", flush=True)
    points = grid_points()
    hand_rows = sweep(HAND, db, raw, points)
    gen_rows = sweep(out, db, raw, points)
    table = agreement_table(hand_rows, gen_rows)
    judge = None
    if args.reuse_judge and (base / "judge.json").is_file():
        print("[4/4] judge spread: reusing judge.json", flush=True)
        judge = {**json.loads((base / "judge.json").read_text(encoding="utf-8")), "reused": True}
    elif args.judge_questions > 0:
        print(f"[4/4] judge spread on {args.judge_questions} answers", flush=True)
        t0 = time.perf_counter()
        judge = judge_spread(db, raw, args.judge_questions, [parse_sampling(t) for t in args.judge_sampling], args.judge_repeats,
                             args.answer_tokens, args.seed)
        judge["command"] = (f"the judge step of `.venv/bin/python -m bench.generated_set_agreement {' '.join(argv or sys.argv[1:])}`, "
                            f"finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({time.perf_counter() - t0:.0f} s)")
        (base / "judge.json").write_text(json.dumps(judge, indent=1) + "\n", encoding="utf-8")
    text = report(args, gen, hand_rows, gen_rows, table, judge, time.perf_counter() - started, (load_start, os.getloadavg()),
                  index_s)
    print(text)
    if args.write_results:
        replace_section(text, HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
