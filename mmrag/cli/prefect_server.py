"""The temporary Prefect API server of one ``mmrag`` process: its child, never outliving it.

With no Prefect API configured, Prefect starts an ephemeral API server itself (``uvicorn …
prefect.server.api.server:create_app``, ~230 MB) as a plain subprocess and stops it from an
``atexit`` hook. That hook never runs on SIGKILL, nor when the process is torn down by a signal,
and the server, in the terminal's process group, dies with the Ctrl-C meant for mmrag, after which
Prefect spends minutes retrying the dead API. So mmrag starts that server itself instead, the same
command Prefect runs, and points ``PREFECT_API_URL`` at it (Prefect then uses it as any configured API):

* the server asks the kernel to SIGKILL it when mmrag dies (``prctl(PR_SET_PDEATHSIG)``, set in a
  two-line ``python -c`` stub that then ``exec``s uvicorn: no ``preexec_fn``, so starting it is
  thread-safe; if mmrag died before the stub ran, the stub exits): nothing is left behind even on
  SIGKILL (Linux; elsewhere only the orderly stops below apply);
* it runs in its own session, so a Ctrl-C in the terminal reaches mmrag only, and mmrag stops it
  last (``atexit``, and :mod:`mmrag.cli.signals` on SIGINT/SIGTERM);
* a watcher thread restarts it on the same port (the flow run lives in the same SQLite database)
  if it dies during the run; when it cannot be restarted the run is stopped promptly by
  :func:`mmrag.cli.signals.abort` with a clear message instead of minutes of retries.

Nothing changes when ``PREFECT_API_URL`` (environment, profile, ``prefect.toml``) names a server, when
ephemeral mode is disabled, or when Prefect was imported before (tests with ``prefect_test_harness``).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

#: Runs in the child before uvicorn: SIGKILL on parent death, then exec (argv: parent pid, uvicorn args...).
CHILD_STUB = (
    "import ctypes,os,signal,sys\n"
    "try:\n"
    " ctypes.CDLL(None,use_errno=True).prctl(1,int(signal.SIGKILL),0,0,0)\n"  # 1 = PR_SET_PDEATHSIG
    "except (AttributeError,OSError):\n"
    " pass\n"
    "if os.getppid()!=int(sys.argv[1]):\n"
    " os._exit(0)\n"
    "os.execv(sys.executable,[sys.executable,'-m','uvicorn',*sys.argv[2:]])\n"
)
#: uvicorn exits 3 when it cannot bind the port (another process took it after we probed it).
PORT_IN_USE = 3
MAX_RESTARTS = 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryServer:
    """One Prefect API server process, child of this process (see the module docstring)."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.env = env
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.stopping = False
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def spawn(self) -> subprocess.Popen:
        """Start the server process (does not wait for it to answer)."""
        env = {**os.environ, **(self.env or {}), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        args = [sys.executable, "-c", CHILD_STUB, str(os.getpid()),
                "--app-dir", _site_packages(), "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        return self.process

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the API answers ``/health``; RuntimeError when it exits or does not answer in time."""
        import httpx  # deferred: imported by Prefect anyway, only needed once a server runs

        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = self.process.poll() if self.process else None
                if code == PORT_IN_USE:
                    self.port = free_port()
                    self.spawn()
                    continue
                if code is not None:
                    raise RuntimeError(f"the temporary Prefect server exited with code {code} while starting")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout_s:g} s "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def watch(self, on_lost: Callable[[str], None], interval_s: float = 0.5) -> None:
        """Restart the server (same port) if it dies; after :data:`MAX_RESTARTS` call ``on_lost(message)``.

        The watcher thread lives as long as the process: a server it restarts is its child, and
        PR_SET_PDEATHSIG fires when the *thread* that started the child ends.
        """
        def loop() -> None:
            while True:
                time.sleep(interval_s)
                with self._lock:
                    process = self.process
                    if self.stopping or process is None:
                        continue
                    code = process.poll()
                    if code is None:
                        continue
                    how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"code {code}"
                    if self.restarts >= MAX_RESTARTS:
                        self.failed = f"the temporary Prefect server (pid {process.pid}) exited ({how}) and could not be kept running"
                        self.process = None
                        message = self.failed
                    else:
                        self.restarts += 1
                        _warn(f"the temporary Prefect server (pid {process.pid}) exited ({how}); restarting it on port {self.port}")
                        try:
                            self.spawn()
                            self.wait_ready(30)
                            continue
                        except (OSError, RuntimeError) as exc:
                            self.failed = f"the temporary Prefect server exited ({how}) and did not restart: {exc}"
                            self.process = None
                            message = self.failed
                on_lost(message)
                return

        self._watcher = threading.Thread(target=loop, name="mmrag-prefect-server-watch", daemon=True)
        self._watcher.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout_s``); safe to call more than once, from any thread."""
        self.stopping = True
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.terminate()
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except OSError:
            pass


_SERVER: TemporaryServer | None = None


def _site_packages() -> str:
    """The folder holding the ``prefect`` package (uvicorn's ``--app-dir``), found without importing it."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise RuntimeError("prefect is not installed")
    return str(Path(spec.origin).parent.parent)


def _warn(message: str) -> None:
    sys.stderr.write(f"mmrag: warning: {message}\n")
    sys.stderr.flush()


def current() -> TemporaryServer | None:
    """The temporary server this process started, if any."""
    return _SERVER


def stop_current() -> None:
    """Stop the temporary server, if one runs (every exit path calls this)."""
    if _SERVER is not None:
        _SERVER.stop()


def ensure_server(on_lost: Callable[[str], None] | None = None) -> TemporaryServer | None:
    """Start the temporary server as this process's child unless a Prefect API is configured; returns it.

    Started before Prefect is imported, so the server boots while this process imports Prefect. Must
    be called from the main thread (see :meth:`TemporaryServer.watch` for why the thread matters).
    """
    global _SERVER
    if _SERVER is not None or os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return _SERVER
    server = TemporaryServer()
    server.spawn()
    atexit.register(server.stop)
    from prefect.settings import get_current_settings  # deferred: Prefect takes seconds to import; after the spawn above

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        server.stop()  # a configured API, or ephemeral mode off (Prefect reports that itself)
        return None
    os.environ["PREFECT_API_URL"] = server.api_url
    from prefect.context import refresh_global_settings_context  # deferred: part of the Prefect import above

    refresh_global_settings_context()
    server.wait_ready(settings.server.ephemeral.startup_timeout_seconds)
    if on_lost is not None:
        server.watch(on_lost)
    _SERVER = server
    return server
