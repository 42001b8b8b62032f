"""Progress of long stages on stderr, in every mode: rich bars on a terminal, else one plain line per stage
at most every ``log_every_s`` seconds (done/total, rate, ETA), so ``--json`` and CI logs show a run moving.

Stdout is never written. A stage shorter than ``log_every_s`` prints nothing in plain mode. Lines are
written by a ticker thread, so a stage whose items take long still reports on time.

:func:`quiet_libraries` keeps Prefect's per-task INFO lines, transformers' loading bars and library
warnings off the terminal unless asked for (Prefect's API handler still records everything).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.console import Console


def progress_wanted(setting: bool | None) -> bool:
    """Explicit setting, else on only when stderr is a terminal and ``CI`` is not set."""
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Bar:
    """One stage's counter: a rich task, a plain-line counter, or nothing."""

    def __init__(self, owner: "Progress | None", label: str, total: int, task_id=None):
        self._owner = owner
        self._task_id = task_id
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.last_line = self.started

    def advance(self, n: int = 1) -> None:
        """Add ``n`` finished items."""
        self.done += n
        if self._owner is not None and self._task_id is not None:
            self._owner._rich.advance(self._task_id, n)

    def add_total(self, n: int) -> None:
        """``n`` more items to do (a stage whose work arrives while it runs)."""
        self.total += n
        if self._owner is not None and self._task_id is not None:
            self._owner._rich.update(self._task_id, total=self.total)

    def line(self, now: float) -> str:
        """``label: done/total (pct), rate/s, ETA`` as of ``now``."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.total > self.done else ""
        return f"{self.label}: {self.done:,}/{self.total:,}{pct}, {rate:.1f}/s, {_duration(elapsed)} elapsed{eta}"

    def close(self) -> None:
        """Remove the bar once its stage is over."""
        if self._owner is not None:
            self._owner._remove(self)
        self._owner = None
        self._task_id = None


class _NestedBar(_Bar):
    """A bar that adds to an enclosing one (sub-steps of one stage share its bar); closing it does nothing."""

    def __init__(self, outer: _Bar):
        super().__init__(None, outer.label, outer.total)
        self._outer = outer

    def advance(self, n: int = 1) -> None:
        self._outer.advance(n)

    def add_total(self, n: int) -> None:
        self._outer.add_total(n)

    def close(self) -> None:
        pass


class Nested:
    """A :class:`Progress` stand-in whose every bar adds to ``outer`` (see :meth:`Progress.within`)."""

    def __init__(self, outer: _Bar):
        self._outer = outer

    def bar(self, label: str, total: int) -> _Bar:
        return _NestedBar(self._outer)

    def __reduce__(self):
        return (Progress, (False, 0))


class Progress:
    """Named counters on stderr, thread-safe: rich bars when ``enabled`` (default: on a terminal), else plain
    lines every ``log_every_s`` seconds (0: silent)."""

    def __init__(self, enabled: bool | None = None, log_every_s: float = 30.0, stream: TextIO | None = None,
                 prefix: str = "mmrag"):
        self.enabled = progress_wanted(enabled)
        self.log_every_s = log_every_s
        self.prefix = prefix
        self._stream = stream
        self._lock = threading.Lock()
        self._bars: list[_Bar] = []
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()
        self._rich: RichProgress | None = None
        if self.enabled:
            self._rich = RichProgress(
                TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
            )

    def __reduce__(self):
        # Task runners that pickle arguments (Dask) get a silent copy: progress belongs to the driving process.
        return (Progress, (False, 0))

    @property
    def plain(self) -> bool:
        """Whether plain lines are written (no bars, and an interval set)."""
        return not self.enabled and self.log_every_s > 0

    def bar(self, label: str, total: int) -> _Bar:
        """Start a counter for ``total`` items (a no-op when silent or ``total`` is 0)."""
        if not total or not (self.enabled or self.plain):
            return _Bar(None, label, total)
        with self._lock:
            if self.enabled:
                if not self._rich.live.is_started:
                    self._rich.start()
                bar = _Bar(self, label, total, self._rich.add_task(label, total=total))
            else:
                bar = _Bar(self, label, total)
                self._start_ticker()
            self._bars.append(bar)
            return bar

    def within(self, bar: _Bar) -> "Nested | Progress":
        """A progress whose bars all add to ``bar`` (for tasks that open their own bar per group)."""
        return Nested(bar) if bar._owner is not None else self

    def _remove(self, bar: _Bar) -> None:
        with self._lock:
            if bar in self._bars:
                self._bars.remove(bar)
            if bar._task_id is not None and self._rich is not None:
                self._rich.remove_task(bar._task_id)

    def _start_ticker(self) -> None:
        if self._ticker is None or not self._ticker.is_alive():
            self._stopped.clear()
            self._ticker = threading.Thread(target=self._tick, name="mmrag-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(min(1.0, self.log_every_s)):
            self.report_due()

    def report_due(self, now: float | None = None) -> list[str]:
        """Write a line for every counter not reported for ``log_every_s`` seconds; returns the lines."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [b for b in self._bars if now - b.last_line >= self.log_every_s]
            for b in due:
                b.last_line = now
            lines = [f"{self.prefix}: {b.line(now)}" for b in due]
        if lines:
            stream = self._stream or sys.stderr
            stream.write("".join(line + "\n" for line in lines))
            stream.flush()
        return lines

    def stop(self) -> None:
        """Stop drawing and the ticker (call once at the end of the run)."""
        self._stopped.set()
        if self._rich is not None and self._rich.live.is_started:
            self._rich.stop()


# -- quiet by default ---------------------------------------------------------------------------

#: Environment defaults that keep libraries' own progress bars and chatter off the terminal.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",          # "Loading weights" and other info lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",          # the fork warning of tokenizers
    # lance's "Deprecation warning … did not include `_distance`/`_score`" on every hybrid query: lancedb's own
    # hybrid search selects columns without them and cannot add them (each leg lacks the other's score column).
    # lancedb 0.40 reads LANCEDB_LOG, once, when it is imported; older releases read RUST_LOG / LANCE_LOG.
    "LANCEDB_LOG": "error",
    "RUST_LOG": "error",
    "LANCE_LOG": "error",
}

_QUIET_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _ConsoleQuiet(logging.Filter):
    """Drop INFO-and-below records of Prefect's flow/task run loggers on a console handler (the API handler,
    attached to those loggers themselves, still gets them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_QUIET_LOGGERS)


def quiet_libraries(verbose: bool = False) -> None:
    """Keep the terminal to what mmrag reports: Prefect's per-task INFO lines, transformers' loading bars and
    known library warnings are dropped from the console unless ``verbose``. Environment variables already set
    win. Safe to call more than once."""
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ConsoleQuiet) for f in handler.filters):
            handler.addFilter(_ConsoleQuiet())
    for name in ("transformers", "sentence_transformers", "huggingface_hub", "lancedb", "numba"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|huggingface_hub|torch)\b.*")
    warnings.filterwarnings("ignore", message=r".*[Nn]umba.*")
    warnings.filterwarnings("ignore", module=r"ranx\b.*")
    try:
        from transformers.utils import logging as hf_logging  # deferred: heavy, and only when installed
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
