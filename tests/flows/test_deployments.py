"""Scheduled runs against a real Prefect server on 127.0.0.1: ``mmrag serve`` creates the deployment with
its cron schedule, a run triggered through the API completes in the serving process and fills LanceDB;
``prefect deploy`` accepts the deployments of ``prefect.yaml``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipelines import store
from tests.helpers import REPO_ROOT, SAMPLE_DIR

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent
CRON = "17 3 * * *"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server at {url} not healthy after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real ``prefect server start`` on a free loopback port with its own PREFECT_HOME; yields (api_url, env)."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api, proc)
        client_env = {**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-client-home"))}
        yield api, client_env
    finally:
        stop(proc)
        log.close()


def api_call(api: str, coro_fn):
    """Run ``coro_fn(client)`` against the server at ``api``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        with temporary_settings({PREFECT_API_URL: api}):
            async with get_client() as client:
                return await coro_fn(client)

    return asyncio.run(go())


@pytest.mark.timeout(600)
def test_serve_creates_scheduled_deployment_and_completes_a_triggered_run(prefect_server, tmp_path):
    api, env = prefect_server
    db = tmp_path / "db"
    env = {**env, "MMRAG_STORE__RAW_DIR": str(tmp_path / "raw"), "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "MMRAG_PROGRESS": "false"}
    log = open(tmp_path / "serve.log", "wb")
    serving = subprocess.Popen([str(BIN / "mmrag"), "serve", str(SAMPLE_DIR), "--db", str(db), "--cron", CRON],
                               cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async def deployment(client):
            return await client.read_deployment_by_name("scheduled-index/nightly-incremental")

        deadline = time.monotonic() + 120
        found = None
        while found is None and time.monotonic() < deadline:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                found = api_call(api, deployment)
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(1)
        assert found is not None, "deployment never appeared"
        assert [s.schedule.cron for s in found.schedules] == [CRON] and found.schedules[0].active
        assert found.parameters["sources"] == [str(SAMPLE_DIR)]
        assert found.parameters["overrides"]["store.db_uri"] == str(db)

        async def trigger(client):
            from prefect.deployments import run_deployment

            return await run_deployment("scheduled-index/nightly-incremental", client=client, timeout=420, poll_interval=2)

        flow_run = api_call(api, trigger)
        assert flow_run.state is not None and flow_run.state.is_completed(), (
            f"{flow_run.state}\n" + (tmp_path / "serve.log").read_text()[-4000:])
    finally:
        stop(serving)
        log.close()
    s = store.IndexStore(str(db))
    docs = s.open_table(store.DOCUMENTS).to_arrow().to_pylist()
    articles = [p for p in SAMPLE_DIR.glob("*.html") if p.name != "index.html"]
    assert len(docs) == len(articles) and {d["status"] for d in docs} == {"ok"}
    assert s.open_table(store.chunks_table_name("minilm", "paragraph")).count_rows() > 50
    assert s.last_run()["summary"]["pages_ok"] == len(articles)


def test_prefect_yaml_deployments_register_with_their_schedules(prefect_server):
    api, env = prefect_server
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    entries = {d["name"]: d for d in spec["deployments"]}
    assert set(entries) == {"nightly-incremental", "weekly-maintenance", "weekly-sweep-gate"}
    assert entries["weekly-sweep-gate"]["entrypoint"] == "flows/sweep.py:sweep_flow"
    run = lambda *args: subprocess.run([str(BIN / "prefect"), *args], cwd=REPO_ROOT, env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=180)
    created = run("work-pool", "create", "mmrag-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    async def read(client):
        return {name: await client.read_deployment_by_name(name)
                for name in ("scheduled-index/nightly-incremental", "maintain/weekly-maintenance", "sweep/weekly-sweep-gate")}

    found = api_call(api, read)
    nightly = found["scheduled-index/nightly-incremental"]
    assert [s.schedule.cron for s in nightly.schedules] == [entries["nightly-incremental"]["schedules"][0]["cron"]]
    assert nightly.work_pool_name == "mmrag-process" and nightly.parameters["overrides"]["ops.maintain_after_index"]
    assert [s.schedule.cron for s in found["maintain/weekly-maintenance"].schedules] == ["0 3 * * 0"]
    sweep = found["sweep/weekly-sweep-gate"]
    assert [s.schedule.cron for s in sweep.schedules] == ["0 4 * * 0"] and sweep.parameters["grid"]["k"] == [3, 5, 10]
