"""Stopping a long command on SIGINT/SIGTERM within seconds, with a summary of what was committed.

:func:`stop_on_signals` wraps a command's run (an index flow, an eval run…). On the first SIGINT or
SIGTERM it

1. raises :class:`Interrupted` (a KeyboardInterrupt) in the main thread, so the run unwinds in order
   (Prefect marks the flow run crashed; locks and files are released) — Prefect swaps SIGTERM for
   its own handler during a flow run, which raises its ``TerminationSignal`` instead; either way,
2. mutes logging, so Prefect's "Crash detected!" and retry tracebacks are not printed, and
3. gives the unwinding :data:`GRACE_S` seconds. In-flight work (a fetch, an embedding batch) is not
   waited for: a watcher thread then finishes the process itself.

Finishing prints the command's report (the summary so far, saying "interrupted"), stops the
temporary Prefect server (:mod:`mmrag.cli.prefect_server`) and exits 130 (SIGINT) or 143 (SIGTERM)
with ``os._exit``: the thread pools' in-flight tasks are abandoned, not joined. Every database
write is an atomic LanceDB commit, so what was committed stays and a write cut short leaves the
table at its last version. A second signal finishes at once.

The watcher learns of a signal from :func:`signal.set_wakeup_fd` (written by the interpreter for
every signal whatever Python handler runs), so it also sees the SIGTERM that Prefect's handler takes.
:func:`abort` stops a run the same way from another thread (the Prefect server could not be kept
running).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import _thread
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mmrag.cli import prefect_server

#: Seconds the run has to unwind after a signal before the process finishes without it.
GRACE_S = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the first SIGINT/SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopReason:
    """Why a run stops early: a signal, or a message (e.g. the Prefect server was lost)."""

    signum: int | None = None
    message: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 1

    @property
    def text(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}" if self.signum else f"stopped: {self.message}"


#: Turns the reason into output (the summary so far) and returns the exit code.
Report = Callable[[StopReason], int]


class _Stopper:
    def __init__(self, report: Report | None, grace_s: float) -> None:
        self.report = report
        self.grace_s = grace_s
        self.reason: StopReason | None = None
        self.handler_calls = 0
        self.finishing = threading.Lock()
        self.deadline_started = False
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.watcher = threading.Thread(target=self._watch, name="mmrag-signal-watch", daemon=True)

    # -- in the main thread (signal handlers)
    def on_signal(self, signum: int, _frame: Any) -> None:
        self.handler_calls += 1
        if self.reason is None:
            self.reason = StopReason(signum=signum)
        if self.handler_calls == 1:
            self.begin()
            raise Interrupted(signum)
        self.finish()  # a second signal (or Prefect re-raising its SIGTERM after its teardown)

    # -- any thread
    def begin(self) -> None:
        """Mute logging and start the grace period (once)."""
        logging.disable(logging.CRITICAL)
        if not self.deadline_started:
            self.deadline_started = True
            threading.Thread(target=self._deadline, name="mmrag-stop-deadline", daemon=True).start()

    def _deadline(self) -> None:
        time.sleep(self.grace_s)
        self.finish()

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if not data or 0 in data:  # closed, or the sentinel written on exit
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    if self.reason is None:
                        self.reason = StopReason(signum=signum)
                    self.begin()

    def finish(self) -> None:
        """Report, stop the children, exit. Runs once; a second caller waits for the exit."""
        self.finishing.acquire()
        reason = self.reason or StopReason(signum=signal.SIGINT)
        logging.disable(logging.CRITICAL)
        code = reason.exit_code
        try:
            if self.report is not None:
                code = self.report(reason)
            else:
                sys.stderr.write(f"mmrag: {reason.text}\n")
        except BaseException as exc:  # the report must not keep the process alive
            sys.stderr.write(f"mmrag: {reason.text} (no summary: {type(exc).__name__}: {exc})\n")
        finally:
            prefect_server.stop_current()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)

    def close(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass


_ACTIVE: _Stopper | None = None


def abort(message: str) -> None:
    """Stop the running command from any thread, as a signal would, with ``message`` as the reason."""
    stopper = _ACTIVE
    if stopper is None:
        sys.stderr.write(f"mmrag: error: {message}\n")
        prefect_server.stop_current()
        os._exit(1)
    if stopper.reason is None:
        stopper.reason = StopReason(message=message)
    stopper.begin()
    stopper.handler_calls += 1  # the interrupt below is not a user's first Ctrl-C
    _thread.interrupt_main()


@contextmanager
def stop_on_signals(report: Report | None = None, *, grace_s: float = GRACE_S) -> Iterator[None]:
    """Run the ``with`` body so that SIGINT/SIGTERM stop it within ``grace_s`` seconds (see the module docstring).

    ``report(reason)`` prints the summary so far and returns the exit code; it runs once, in the main
    thread when the body unwinds in time, else in the watcher thread. Outside the main thread
    (signal handlers cannot be set there) the body runs unguarded.
    """
    global _ACTIVE
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopper = _Stopper(report, grace_s)
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(stopper.write_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, stopper.on_signal)
    stopper.watcher.start()
    _ACTIVE = stopper
    try:
        yield
    except BaseException:
        if stopper.reason is not None:  # unwound in time after a signal (Interrupted, TerminationSignal, …)
            stopper.finish()
        raise
    finally:
        _ACTIVE = None
        stopper.close()
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if stopper.reason is not None:  # the signal landed where nothing raised (e.g. in teardown that swallowed it)
        stopper.finish()
