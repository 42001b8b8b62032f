"""Scheduled runs against a real Prefect server on 127.0.0.1: ``mmrag serve`` creates the deployments with
their cron schedules, a run triggered through the API completes in the serving process and fills LanceDB;
``prefect deploy`` accepts the deployments of ``prefect.yaml``; the weekly sweep + gate of ``prefect.yaml``,
run by a process worker, completes when the gate passes and ends Failed when it fails."""

from __future__ import annotations

import asyncio
import json
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

from mmrag.config import MmragConfig
from mmrag.pipelines import store
from tests.helpers import REPO_ROOT, SAMPLE_DIR

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent
CRON = "17 3 * * *"
SWEEP_CRON = "29 4 * * 6"


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
    serving = subprocess.Popen([str(BIN / "mmrag"), "serve", str(SAMPLE_DIR), "--db", str(db), "--cron", CRON,
                                "--sweep-cron", SWEEP_CRON],
                               cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async def deployment(client):
            return await client.read_deployment_by_name("scheduled-index/nightly-incremental")

        async def sweep_gate(client):
            return await client.read_deployment_by_name("sweep-gate/weekly-sweep-gate")

        # `serve` registers its deployments one after the other: wait for both
        deadline = time.monotonic() + 120
        found = weekly = None
        while (found is None or weekly is None) and time.monotonic() < deadline:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                found = found or api_call(api, deployment)
                weekly = api_call(api, sweep_gate)
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(1)
        assert found is not None and weekly is not None, "deployments never appeared"
        assert [s.schedule.cron for s in found.schedules] == [CRON] and found.schedules[0].active
        assert found.parameters["sources"] == [str(SAMPLE_DIR)]
        assert found.parameters["overrides"]["store.db_uri"] == str(db)
        assert [s.schedule.cron for s in weekly.schedules] == [SWEEP_CRON] and weekly.schedules[0].active
        assert weekly.parameters["db"] == str(db) and weekly.parameters["sources"] == [str(SAMPLE_DIR)]
        assert weekly.parameters["baseline"] == "eval/baselines/sample.json" and weekly.parameters["metrics"]

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
    assert s.open_table(store.chunks_table_name("minilm", MmragConfig().chunking.key())).count_rows() > 50
    assert s.last_run()["summary"]["pages_ok"] == len(articles)


def test_prefect_yaml_deployments_register_with_their_schedules(prefect_server):
    api, env = prefect_server
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    entries = {d["name"]: d for d in spec["deployments"]}
    assert set(entries) == {"nightly-incremental", "weekly-maintenance", "weekly-sweep-gate"}
    assert entries["weekly-sweep-gate"]["entrypoint"] == "flows/scheduled.py:sweep_gate_flow"
    run = lambda *args: subprocess.run([str(BIN / "prefect"), *args], cwd=REPO_ROOT, env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=180)
    created = run("work-pool", "create", "mmrag-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    async def read(client):
        return {name: await client.read_deployment_by_name(name)
                for name in ("scheduled-index/nightly-incremental", "maintain/weekly-maintenance", "sweep-gate/weekly-sweep-gate")}

    found = api_call(api, read)
    nightly = found["scheduled-index/nightly-incremental"]
    assert [s.schedule.cron for s in nightly.schedules] == [entries["nightly-incremental"]["schedules"][0]["cron"]]
    assert nightly.work_pool_name == "mmrag-process" and nightly.parameters["overrides"]["ops.maintain_after_index"]
    assert [s.schedule.cron for s in found["maintain/weekly-maintenance"].schedules] == ["0 3 * * 0"]
    sweep = found["sweep-gate/weekly-sweep-gate"]
    assert [s.schedule.cron for s in sweep.schedules] == ["0 4 * * 0"]
    assert sweep.parameters["grid"] == "eval/grids/sample.yaml" and sweep.parameters["metrics"] == ["recall@5", "ndcg@10", "mrr"]
    assert sweep.parameters["baseline"] == "eval/baselines/sample.json" and sweep.parameters["tolerance"] == 0.02


@pytest.mark.timeout(900)
def test_weekly_sweep_gate_from_prefect_yaml_completes_and_a_worse_setting_fails_the_gate(prefect_server, tmp_path):
    """The weekly deployment of prefect.yaml, run by a process worker: a run at the baseline's setting
    completes with the gate passed; k=1 against the k=15 baseline on recall@10 ends Failed."""
    api, env = prefect_server
    env = {**env, "PWD": str(REPO_ROOT), "MMRAG_STORE__RAW_DIR": str(tmp_path / "raw"), "MMRAG_PROGRESS": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
    run = lambda *args: subprocess.run([str(BIN / "prefect"), *args], cwd=REPO_ROOT, env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=180)
    created = run("work-pool", "create", "mmrag-process", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--name", "weekly-sweep-gate")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "mmrag-process", "--limit", "1"],
                              cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # Paths of the deployment (queries, grid, baseline) stay relative to the checkout; results go to tmp_path.
    common = {"db": str(tmp_path / "db"), "sources": [str(SAMPLE_DIR)], "metrics": ["recall@10"],
              "overrides": {"eval.out_dir": str(tmp_path / "runs"), "progress": False}}

    def trigger(parameters: dict):
        async def go(client):
            from prefect.deployments import run_deployment

            return await run_deployment("sweep-gate/weekly-sweep-gate", client=client, parameters=parameters,
                                        timeout=600, poll_interval=2)

        return api_call(api, go)

    def artifacts(flow_run_id):
        async def go(client):
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return {a.key: a for a in found}

        return api_call(api, go)

    try:
        passed = trigger({**common, "grid": {"text_k": [10, 15]}})
        assert passed.state is not None and passed.state.is_completed(), (
            f"{passed.state}\n" + (tmp_path / "worker.log").read_text()[-4000:])
        published = artifacts(passed.id)
        assert {"gate-result", "gate-summary", "gate-report"} <= set(published)
        assert "Gate passed" in published["gate-summary"].data and "recall@10" in published["gate-summary"].data
        assert "(file://" in published["gate-report"].data and published["gate-report"].data.endswith("index.html)")

        failed = trigger({**common, "grid": {"text_k": [1]}})
        assert failed.state is not None and failed.state.is_failed(), (
            f"{failed.state}\n" + (tmp_path / "worker.log").read_text()[-4000:])
        assert "gate failed" in (failed.state.message or "") and "text:recall@10" in failed.state.message
        published = artifacts(failed.id)
        assert "**FAILED**" in published["gate-summary"].data
        rows = {(r["target"], r["metric"]): r for r in json.loads(published["gate-result"].data)}
        assert rows[("text", "recall@10")]["status"] == "FAIL" and rows[("text", "recall@10")]["delta"] < -0.02
    finally:
        stop(worker)
        log.close()
    assert len(list((tmp_path / "runs").iterdir())) == 2  # one run directory per sweep, none in the checkout
