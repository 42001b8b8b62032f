"""The embedded LLM's runtime: xllamacpp (what the ``llamacpp`` backend uses) against llama-cpp-python, same model.

Both runtimes run the default GGUF (assembled into ``llm.cache_dir`` by :mod:`mmrag.pipelines.llm.gguf`,
located through the backend's own settings) with the backend's context size and thread count,
greedy decoding (temperature 0) and the same chat messages: RAG prompts rendered by
:func:`mmrag.pipelines.generate.build_prompt` from sections of the sample corpus (``data/sample``), one
text question of ``data/eval/sample.jsonl`` per article with its labelled section and the sections
after it as hits (a few hundred prompt tokens each).

* xllamacpp is driven exactly as the product drives it: :class:`~mmrag.pipelines.llm.llamacpp_backend.LlamaCppBackend`
  (``load()``, then streamed ``generate()``). llama.cpp's per-request ``timings`` (which the
  backend does not pass on) are read by a tap on its server object.
* llama-cpp-python: ``Llama(model_path, n_ctx, n_threads, n_threads_batch, verbose=False)`` and
  streamed ``create_chat_completion`` (its defaults otherwise); timings from ``llama_perf_context``.

Each runtime lives in its own subprocess (so peak RSS and loads do not mix). For every round both
are started (one after the other, the order alternating per round), then each prompt goes to both,
back to back, the order alternating per prompt: load from other processes hits both alike.
Figures: import and model-load seconds, time to first token, prompt-eval and generation tokens/s
(the runtimes' own timings; generation also from wall clock), end-to-end seconds per answer, peak
RSS, whether the greedy answers are identical, and the ratio llama-cpp-python / xllamacpp.
``--install-cost`` also measures what each costs to install on a fresh machine: download, build
(llama-cpp-python compiles llama.cpp from its sdist) and install seconds and artifact sizes, with an
empty pip cache (CPU-heavy: minutes on 2 cores).

    .venv/bin/pip install -e '.[llm,llm-bench]'     # llama-cpp-python is an optional extra (it builds from source)
    .venv/bin/python -m bench.llm_runtime --install-cost --write-results   # 3 rounds x 7 prompts, 64 tokens
    .venv/bin/python -m bench.llm_runtime --quick                           # 1 round x 3 prompts, 32 tokens

Without llama-cpp-python installed the xllamacpp side still runs and the section says what is
missing. ``--write-results`` replaces only the ``## llm_runtime`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

from bench.machine import load_average, machine_info
from bench.results import RESULTS, replace_section

SECTION = "## llm_runtime"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
EVAL_SET = REPO_ROOT / "data" / "eval" / "sample.jsonl"
RUNTIMES = ("xllamacpp", "llama-cpp-python")
PACKAGES = {"xllamacpp": "xllamacpp", "llama-cpp-python": "llama-cpp-python"}
MODULES = {"xllamacpp": "xllamacpp", "llama-cpp-python": "llama_cpp"}


# --------------------------------------------------------------------------- prompts (parent)


def section_hits(document: Any, section: str, min_words: int) -> list[dict]:
    """Retrieval-like text hits from a parsed article: the section named ``section`` and the ones after it.

    One hit per run of blocks under one section path, in document order from the first path ending
    in ``section``, until ``min_words`` words are gathered; scores fall with rank (pure).
    """
    groups: list[tuple[tuple[str, ...], list[str]]] = []
    for block in document.blocks:
        if groups and groups[-1][0] == block.section_path:
            groups[-1][1].append(block.text)
        else:
            groups.append((block.section_path, [block.text]))
    start = next((i for i, (path, _) in enumerate(groups) if path and path[-1] == section), 0)
    hits: list[dict] = []
    words = 0
    for path, texts in groups[start:]:
        text = "\n\n".join(texts)
        hits.append({"target": "text", "score": round(0.9 - 0.05 * len(hits), 2), "doc_url": document.url,
                     "article_title": document.title, "section": " > ".join(path[1:]) or document.title, "text": text})
        words += len(text.split())
        if words >= min_words:
            break
    return hits


def rag_prompts(count: int, system_prompt: str | None, min_words: int = 200) -> list[tuple[str, list[dict]]]:
    """``count`` (question, chat messages) pairs: the first text question per article of the eval set, with its section's hits."""
    from mmrag.pipelines.generate import build_messages, build_prompt
    from mmrag.pipelines.parse import parse_html

    prompts: list[tuple[str, list[dict]]] = []
    seen: set[str] = set()
    for line in EVAL_SET.read_text(encoding="utf-8").splitlines():
        query = json.loads(line)
        if query["kind"] != "text" or not query["relevant"] or query["relevant"][0]["url"] in seen:
            continue
        relevant = query["relevant"][0]
        seen.add(relevant["url"])
        page = SAMPLE_DIR / relevant["url"]
        hits = section_hits(parse_html(page.read_bytes(), relevant["url"]), relevant.get("section", ""), min_words)
        messages = build_messages(build_prompt(query["query"], hits), system_prompt)
        prompts.append((query["query"], [{"role": m.role, "content": m.content} for m in messages]))
        if len(prompts) == count:
            break
    return prompts


# --------------------------------------------------------------------------- child: one runtime, one process


def vm_mib(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` figure of this process in MiB (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class TimingsTap:
    """Stands in for the xllamacpp server object and keeps the ``timings`` of the last request."""

    def __init__(self, server: Any):
        self.server = server
        self.timings: dict = {}

    def handle_chat_completions(self, request: dict, callback: Any = None) -> Any:
        """Forward to the real server, recording ``timings`` from the result or the streamed chunks."""
        if callback is None:
            result = self.server.handle_chat_completions(request)
            self.timings = result.get("timings") or {}
            return result

        def tap(chunk: dict) -> Any:
            if chunk.get("timings"):
                self.timings = chunk["timings"]
            return callback(chunk)

        return self.server.handle_chat_completions(request, tap)


class XllamacppSession:
    """The product path: :class:`LlamaCppBackend` on the model file, streamed greedy answers."""

    def __init__(self, model: str, n_ctx: int, n_threads: int, max_tokens: int):
        from mmrag.pipelines.llm.base import GenerationOptions
        from mmrag.pipelines.llm.llamacpp_backend import LlamaCppBackend

        self.backend = LlamaCppBackend(model, n_ctx=n_ctx, n_threads=n_threads)
        self.backend.load()
        self.tap = TimingsTap(self.backend._server)
        # The backend drops llama.cpp's per-request timings; the tap reads them on the same request path.
        self.backend._server = self.tap
        self.options = GenerationOptions(max_tokens=max_tokens, temperature=0.0)

    def answer(self, messages: list[dict]) -> dict:
        """One streamed answer: text, wall-clock first-token and end-to-end seconds, token counts, llama.cpp timings."""
        from mmrag.pipelines.llm.base import ChatMessage, Usage

        chat = [ChatMessage(m["role"], m["content"]) for m in messages]
        pieces: list[str] = []
        first = usage = None
        started = time.perf_counter()
        for event in self.backend.generate(chat, stream=True, options=self.options):
            if isinstance(event, Usage):
                usage = event
            elif event:
                first = first or time.perf_counter()
                pieces.append(event)
        total = time.perf_counter() - started
        t = self.tap.timings
        return {"text": "".join(pieces), "ttft_s": (first - started) if first else None, "e2e_s": total,
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "finish_reason": usage.finish_reason,
                "prompt_eval_tokens": t.get("prompt_n"), "prompt_eval_s": (t.get("prompt_ms") or 0) / 1000,
                "gen_tokens": t.get("predicted_n"), "gen_s": (t.get("predicted_ms") or 0) / 1000}


class LlamaCppPythonSession:
    """llama-cpp-python as a user would run it: ``Llama`` with the matched settings, streamed chat completions."""

    def __init__(self, model: str, n_ctx: int, n_threads: int, max_tokens: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        self.max_tokens = max_tokens

    def answer(self, messages: list[dict]) -> dict:
        """One streamed answer with the same fields as :meth:`XllamacppSession.answer` (timings from llama_perf_context)."""
        import llama_cpp

        ctx = self.llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        pieces: list[str] = []
        first = finish = None
        started = time.perf_counter()
        for chunk in self.llm.create_chat_completion(messages=messages, max_tokens=self.max_tokens, temperature=0.0,
                                                     repeat_penalty=1.0, stream=True):
            choice = chunk["choices"][0]
            text = choice["delta"].get("content")
            if text:
                first = first or time.perf_counter()
                pieces.append(text)
            finish = choice.get("finish_reason") or finish
        total = time.perf_counter() - started
        perf = llama_cpp.llama_perf_context(ctx)
        # Every sampled token but the last (the end-of-generation one, or the length-capped one) is evaluated once;
        # counting that last one too matches llama.cpp server's completion_tokens. The KV holds prompt + evaluated tokens.
        completion = perf.n_eval + 1
        return {"text": "".join(pieces), "ttft_s": (first - started) if first else None, "e2e_s": total,
                "prompt_tokens": self.llm.n_tokens - perf.n_eval, "completion_tokens": completion, "finish_reason": finish,
                "prompt_eval_tokens": perf.n_p_eval, "prompt_eval_s": perf.t_p_eval_ms / 1000,
                "gen_tokens": perf.n_eval, "gen_s": perf.t_eval_ms / 1000}


def cpu_features(runtime: str) -> str:
    """The CPU features the runtime's llama.cpp was built for ("AVX2 AVX512 ..."), from its system-info string."""
    if runtime == "xllamacpp":
        import xllamacpp

        info = xllamacpp.get_system_info()
    else:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode()
    flags = [part.split("=")[0].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    return " ".join(flag.removeprefix("CPU : ") for flag in flags)


def child_main(runtime: str, model: str, n_ctx: int, n_threads: int, max_tokens: int) -> None:
    """Load one runtime, report load figures, answer one JSON message list per stdin line, then report peak RSS."""
    def emit(payload: dict) -> None:
        print(json.dumps(payload), flush=True)

    if runtime == "xllamacpp":
        importlib.import_module("mmrag.pipelines.llm.llamacpp_backend")  # the product's code, outside the timed import
    started = time.perf_counter()
    importlib.import_module(MODULES[runtime])
    import_s = time.perf_counter() - started
    rss_before = vm_mib("VmRSS")
    session_type = XllamacppSession if runtime == "xllamacpp" else LlamaCppPythonSession
    started = time.perf_counter()
    session = session_type(model, n_ctx, n_threads, max_tokens)
    emit({"import_s": import_s, "load_s": time.perf_counter() - started, "rss_before_load_mib": rss_before,
          "rss_after_load_mib": vm_mib("VmRSS"), "cpu_features": cpu_features(runtime)})
    for line in sys.stdin:
        emit(session.answer(json.loads(line)))
    emit({"peak_rss_mib": vm_mib("VmHWM")})


class RuntimeProcess:
    """The parent's handle on one child process running one runtime."""

    def __init__(self, runtime: str, model: Path, n_ctx: int, n_threads: int, max_tokens: int, log_dir: Path):
        self.runtime = runtime
        self.log = log_dir / f"{runtime}.stderr"
        command = [sys.executable, "-m", "bench.llm_runtime", "--child", runtime, "--model", str(model),
                   "--n-ctx", str(n_ctx), "--threads", str(n_threads), "--max-tokens", str(max_tokens)]
        with self.log.open("a") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, cwd=REPO_ROOT)
        self.loaded = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.runtime} child exited with {self.process.returncode}:\n{tail}")
        return json.loads(line)

    def answer(self, messages: list[dict]) -> dict:
        """Send one message list and wait for its answer."""
        self.process.stdin.write(json.dumps(messages) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> float:
        """End the child (stdin closed); returns its peak RSS in MiB."""
        self.process.stdin.close()
        peak = self._read()["peak_rss_mib"]
        self.process.wait(timeout=60)
        return peak


# --------------------------------------------------------------------------- measurement (parent)


def run_rounds(runtimes: list[str], model: Path, prompts: list[list[dict]], rounds: int, n_ctx: int, n_threads: int,
               max_tokens: int, log_dir: Path) -> dict[str, dict]:
    """All rounds: per round both children started (alternating order), each prompt to both (alternating order)."""
    results: dict[str, dict] = {r: {"loads": [], "answers": [], "peak_rss_mib": []} for r in runtimes}
    for round_no in range(rounds):
        order = runtimes if round_no % 2 == 0 else runtimes[::-1]
        processes = {}
        for runtime in order:
            processes[runtime] = RuntimeProcess(runtime, model, n_ctx, n_threads, max_tokens, log_dir)
            results[runtime]["loads"].append(processes[runtime].loaded)
            print(f"round {round_no + 1}: {runtime} loaded in {processes[runtime].loaded['load_s']:.2f} s", flush=True)
        for index, messages in enumerate(prompts):
            turn = order if (round_no + index) % 2 == 0 else order[::-1]
            for runtime in turn:
                answer = processes[runtime].answer(messages)
                answer.update(round=round_no, prompt=index)
                results[runtime]["answers"].append(answer)
                print(f"  prompt {index + 1} {runtime}: ttft {answer['ttft_s'] or 0:.2f} s, e2e {answer['e2e_s']:.2f} s, "
                      f"{answer['prompt_tokens']}+{answer['completion_tokens']} tokens", flush=True)
        for runtime in order:
            results[runtime]["peak_rss_mib"].append(processes[runtime].close())
    return results


def rate(tokens: float | None, seconds: float | None) -> float | None:
    """Tokens per second, or None when either figure is missing or zero."""
    return tokens / seconds if tokens and seconds else None


def median_of(values: list[float | None]) -> float | None:
    """Median of the values that are present (None when none are)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(result: dict) -> dict[str, float | None]:
    """The per-runtime figures: medians over rounds (loads) and over answers (timings), max peak RSS."""
    answers, loads = result["answers"], result["loads"]
    return {
        "import_s": median_of([load["import_s"] for load in loads]),
        "load_s": median_of([load["load_s"] for load in loads]),
        "ttft_s": median_of([a["ttft_s"] for a in answers]),
        "prompt_eval_tok_s": median_of([rate(a["prompt_eval_tokens"], a["prompt_eval_s"]) for a in answers]),
        "gen_tok_s": median_of([rate(a["gen_tokens"], a["gen_s"]) for a in answers]),
        "gen_tok_s_wall": median_of([rate((a["completion_tokens"] or 1) - 1, a["e2e_s"] - a["ttft_s"])
                                     for a in answers if a["ttft_s"] is not None]),
        "e2e_p50_s": median_of([a["e2e_s"] for a in answers]),
        "e2e_max_s": max(a["e2e_s"] for a in answers),
        "peak_rss_mib": max(result["peak_rss_mib"]),
        "model_rss_mib": median_of([load["rss_after_load_mib"] - load["rss_before_load_mib"] for load in loads]),
        "prompt_tokens": statistics.mean(a["prompt_tokens"] for a in answers),
        "completion_tokens": statistics.mean(a["completion_tokens"] for a in answers),
    }


def paired_e2e_ratio(results: dict[str, dict]) -> float | None:
    """Median over (round, prompt) pairs of llama-cpp-python e2e / xllamacpp e2e (each pair run back to back)."""
    if len(results) < 2:
        return None
    other = {(a["round"], a["prompt"]): a["e2e_s"] for a in results["llama-cpp-python"]["answers"]}
    return median_of([other[(a["round"], a["prompt"])] / a["e2e_s"] for a in results["xllamacpp"]["answers"]])


def agreement(results: dict[str, dict], n_prompts: int) -> dict[str, Any]:
    """Identical greedy answers across runtimes (per prompt, first round) and within each runtime across rounds."""
    first = {r: {a["prompt"]: a["text"] for a in res["answers"] if a["round"] == 0} for r, res in results.items()}
    stable = {r: sum(len({a["text"] for a in res["answers"] if a["prompt"] == p}) == 1 for p in range(n_prompts))
              for r, res in results.items()}
    same = None
    if len(results) == 2:
        same = sum(first["xllamacpp"][p] == first["llama-cpp-python"][p] for p in range(n_prompts))
    return {"identical_across": same, "stable_within": stable, "first_round": first}


# --------------------------------------------------------------------------- install cost


def pip_timed(args: list[str]) -> float:
    """Seconds one ``pip`` command of this interpreter takes (it must succeed)."""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{(completed.stdout + completed.stderr)[-3000:]}")
    return time.perf_counter() - started


def install_cost(package: str, version: str, work: Path) -> dict[str, Any]:
    """Download, build (for an sdist) and install seconds and artifact sizes of ``package==version`` with no pip cache.

    What ``pip install`` would fetch here is downloaded; an sdist is built into a wheel (with pip's
    build isolation, as a fresh machine would); the wheel is installed into a scratch target.
    Dependencies are left out of every step (llama-cpp-python's are small wheels: numpy, jinja2, diskcache, typing-extensions).
    """
    folder = work / package
    folder.mkdir(parents=True)
    download_s = pip_timed(["download", "--no-deps", "--no-cache-dir", "-d", str(folder), f"{package}=={version}"])
    artifact = next(folder.iterdir())
    build_s = 0.0
    wheel = artifact
    if not artifact.name.endswith(".whl"):
        built = folder / "built"
        build_s = pip_timed(["wheel", "--no-deps", "--no-cache-dir", "-w", str(built), str(artifact)])
        wheel = next(built.glob("*.whl"))
    install_s = pip_timed(["install", "--no-deps", "--no-cache-dir", "--no-index", "--target", str(work / f"{package}-target"),
                           str(wheel)])
    return {"package": package, "version": version, "artifact": artifact.name, "artifact_mib": artifact.stat().st_size / 2**20,
            "wheel_mib": wheel.stat().st_size / 2**20, "download_s": download_s, "build_s": build_s, "install_s": install_s,
            "total_s": download_s + build_s + install_s, "wheel_path": str(wheel)}


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    """A figure for the table ('-' when missing)."""
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as a table cell."""
    return "-" if a is None or not b else f"{a / b:.2f}"


FIGURES = [
    ("import runtime module (s)", "import_s", 2), ("model load (s, median of rounds)", "load_s", 2),
    ("time to first token (s, p50)", "ttft_s", 2), ("prompt eval (tok/s, runtime timings, p50)", "prompt_eval_tok_s", 1),
    ("generation (tok/s, runtime timings, p50)", "gen_tok_s", 1), ("generation (tok/s, wall clock, p50)", "gen_tok_s_wall", 1),
    ("end-to-end per answer (s, p50)", "e2e_p50_s", 2), ("end-to-end per answer (s, max)", "e2e_max_s", 2),
    ("peak RSS (MiB)", "peak_rss_mib", 0), ("RSS added by model load (MiB)", "model_rss_mib", 0),
    ("prompt tokens (mean)", "prompt_tokens", 0), ("completion tokens (mean)", "completion_tokens", 1),
]


def markdown(context: dict, figures: dict[str, dict], paired: float | None, agree: dict, costs: list[dict],
             missing: str | None) -> str:
    """The ``## llm_runtime`` section."""
    versions = ", ".join(f"{r} {context['versions'][r]}" for r in RUNTIMES)
    lines = [
        SECTION, "",
        f"`.venv/bin/python -m bench.llm_runtime {context['argv']}` — {context['date']}", "",
        f"{context['machine']}; {versions}; load average before {context['load_before']}, after {context['load_after']} "
        "(other jobs share the 2 cores: absolute figures are upper bounds; the runs are interleaved so load hits both alike).", "",
        f"Model `{context['model']}`, n_ctx {context['n_ctx']}, {context['threads']} threads (the backend's default), "
        f"greedy, max_tokens {context['max_tokens']}; {context['n_prompts']} RAG prompts (build_prompt over data/sample "
        f"sections) x {context['rounds']} rounds, each runtime in its own process.", "",
    ]
    for runtime, features in context["cpu_features"].items():
        lines.append(f"- {runtime} llama.cpp built for: {features}")
    lines.append("")
    if missing:
        lines += [f"**llama-cpp-python not measured:** {missing}", ""]
    lines += ["| figure | xllamacpp | llama-cpp-python | ratio lcp / x |", "|---|---:|---:|---:|"]
    x, lcp = figures.get("xllamacpp", {}), figures.get("llama-cpp-python", {})
    for label, key, digits in FIGURES:
        lines.append(f"| {label} | {fmt(x.get(key), digits)} | {fmt(lcp.get(key), digits)} | {ratio(lcp.get(key), x.get(key))} |")
    if paired is not None:
        lines.append(f"| end-to-end, median of back-to-back pair ratios | | | {paired:.2f} |")
    lines.append("")
    if agree["identical_across"] is not None:
        lines.append(f"Identical greedy answers across runtimes: {agree['identical_across']} of {context['n_prompts']} prompts "
                     "(first round).")
    lines.append("Same answer in every round: " + ", ".join(f"{r} {n} of {context['n_prompts']}"
                                                          for r, n in agree["stable_within"].items()) + ".")
    lines.append("")
    if costs:
        lines += ["Install cost on a fresh machine (empty pip cache, no dependencies; `--install-cost`):", "",
                  "| package | artifact | artifact MiB | wheel MiB | download s | build s | install s | total s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in costs:
            lines.append(f"| {c['package']} {c['version']} | {c['artifact']} | {c['artifact_mib']:.1f} | {c['wheel_mib']:.1f} | "
                         f"{c['download_s']:.1f} | {c['build_s']:.0f} | {c['install_s']:.1f} | {c['total_s']:.0f} |")
        if len(costs) == 2 and costs[0]["total_s"]:
            lines.append(f"\nratio llama-cpp-python / xllamacpp total install seconds: {costs[1]['total_s'] / costs[0]['total_s']:.0f}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` in this interpreter, or None."""
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the markdown section (and write it with ``--write-results``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=7, help="RAG prompts (one per sample article, at most 7)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds: both runtimes started afresh, every prompt asked")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the backend's default)")
    parser.add_argument("--quick", action="store_true", help="1 round, 3 prompts, 32 tokens")
    parser.add_argument("--install-cost", action="store_true", help="also time download/build/install of both packages")
    parser.add_argument("--lcp-version", default=None, help="llama-cpp-python version for --install-cost (default: installed)")
    parser.add_argument("--keep-wheels", type=Path, default=None, help="copy the wheels --install-cost used/built here")
    parser.add_argument("--write-results", action="store_true", help=f"replace the '{SECTION}' section of {RESULTS}")
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--n-ctx", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.model, args.n_ctx, args.threads, args.max_tokens)
        return 0
    if args.quick:
        args.rounds, args.prompts, args.max_tokens = 1, 3, 32

    from mmrag.config import MmragConfig
    from mmrag.pipelines.llm import make_backend
    from mmrag.pipelines.llm.gguf import resolve_gguf

    config = MmragConfig()
    backend = make_backend(config.llm)  # the default llamacpp backend: its cache dir, n_ctx and thread default
    model_path = resolve_gguf(backend.model, backend.cache_dir)
    threads = args.threads or backend.n_threads
    versions = {r: installed_version(PACKAGES[r]) or "not installed" for r in RUNTIMES}
    runtimes = [r for r in RUNTIMES if importlib.util.find_spec(MODULES[r]) is not None]
    missing = None
    if "llama-cpp-python" not in runtimes:
        missing = ("`llama_cpp` is not importable in this venv (install the optional extra: "
                   "`.venv/bin/pip install -e '.[llm-bench]'`, which compiles llama.cpp)")
    if "xllamacpp" not in runtimes:
        raise SystemExit("xllamacpp is not installed: the llamacpp backend cannot run")
    prompts = rag_prompts(args.prompts, config.llm.system_prompt)
    with model_path.open("rb") as f:  # warm the page cache so neither runtime's first load pays the disk
        while f.read(1 << 24):
            pass
    load_before = load_average()
    print(f"{machine_info()}\nload average: {load_before}\nmodel: {model_path}, threads {threads}, runtimes {runtimes}", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="mmrag-llm-runtime-"))
    results = run_rounds(runtimes, model_path, [m for _, m in prompts], args.rounds, backend.n_ctx, threads,
                         args.max_tokens, log_dir)
    figures = {r: summarise(res) for r, res in results.items()}
    agree = agreement(results, len(prompts))
    costs: list[dict] = []
    if args.install_cost:
        lcp_version = args.lcp_version or installed_version("llama-cpp-python")
        work = Path(tempfile.mkdtemp(prefix="mmrag-install-cost-"))
        try:
            for package, version in (("xllamacpp", installed_version("xllamacpp")), ("llama-cpp-python", lcp_version)):
                if not version:
                    print(f"install cost: {package} skipped (no version: pass --lcp-version)", flush=True)
                    continue
                print(f"install cost: {package}=={version} ...", flush=True)
                try:
                    costs.append(install_cost(package, version, work))
                except RuntimeError as exc:
                    print(f"install cost: {package} failed: {exc}", flush=True)
                    missing = (missing or "") + f" {package}=={version} did not build: {str(exc).splitlines()[-1]}"
                if costs and args.keep_wheels:
                    args.keep_wheels.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(costs[-1]["wheel_path"], args.keep_wheels)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    context = {"argv": " ".join(argv if argv is not None else sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
               "machine": machine_info(), "versions": versions, "load_before": load_before, "load_after": load_average(),
               "model": model_path.name, "n_ctx": backend.n_ctx, "threads": threads, "max_tokens": args.max_tokens,
               "n_prompts": len(prompts), "rounds": args.rounds,
               "cpu_features": {r: res["loads"][0]["cpu_features"] for r, res in results.items()}}
    section = markdown(context, figures, paired_e2e_ratio(results), agree, costs, missing)
    print("\n" + section)
    for index, (question, _) in enumerate(prompts):
        print(f"Q{index + 1}: {question}")
        for runtime, texts in agree["first_round"].items():
            print(f"  {runtime}: {texts[index]!r}")
    if args.write_results:
        replace_section(section, SECTION)  # re-reads RESULTS.md just before writing
        print(f"wrote {SECTION} in {RESULTS}")
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
