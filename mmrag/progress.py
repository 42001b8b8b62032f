"""Progress bars for long stages: rich on a terminal, silent in CI logs and under ``--json``."""

from __future__ import annotations

import os
import sys
import threading

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.console import Console


def progress_wanted(setting: bool | None) -> bool:
    """Explicit setting, else on only when stderr is a terminal and ``CI`` is not set."""
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


class _Bar:
    def __init__(self, owner: "Progress", task_id):
        self._owner = owner
        self._task_id = task_id

    def advance(self, n: int = 1) -> None:
        """Add ``n`` finished items."""
        if self._task_id is not None:
            self._owner._rich.advance(self._task_id, n)

    def close(self) -> None:
        """Remove the bar once its stage is over."""
        if self._task_id is not None:
            self._owner._rich.remove_task(self._task_id)
            self._task_id = None


class Progress:
    """Named bars on stderr, thread-safe; a no-op when disabled."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = progress_wanted(enabled)
        self._lock = threading.Lock()
        self._rich: RichProgress | None = None
        if self.enabled:
            self._rich = RichProgress(
                TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
            )

    def __reduce__(self):
        # Task runners that pickle arguments (Dask) get a silent copy: bars belong to the driving process.
        return (Progress, (False,))

    def bar(self, label: str, total: int) -> _Bar:
        """Start a bar for ``total`` items (a no-op bar when disabled or ``total`` is 0)."""
        if not self.enabled or not total:
            return _Bar(self, None)
        with self._lock:
            if not self._rich.live.is_started:
                self._rich.start()
            return _Bar(self, self._rich.add_task(label, total=total))

    def stop(self) -> None:
        """Stop drawing (call once at the end of the run)."""
        if self._rich is not None and self._rich.live.is_started:
            self._rich.stop()
