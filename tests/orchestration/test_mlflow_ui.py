"""A person's view of a finished smoke sweep: the MLflow UI (a real ``mlflow server``) in headless
Chromium. The runs table lists the sweep, its trials and the dataset; the parent's artifact view
has the figures and renders them. Screenshots stay in the test's tmp dir."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from _browser import Browser, chromium
from _sweeps import run_sweep

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # a loaded 2-core box starts the server slowly
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_mlflow_ui_shows_sweep_trials_dataset_and_figures(tmp_path, smoke_root, mlflow_server):
    proc = run_sweep(tmp_path, "method=stvg", "smoke=true", f"data.root={smoke_root}", "name=ui-smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    trials = [r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in proc.stdout  # the printed link

    profile = tmp_path / "chromium"
    profile.mkdir()
    browser = Browser(profile)
    try:
        base = f"{mlflow_server}/#/experiments/{exp.experiment_id}"
        browser.open(f"{base}/runs?workflowType=machine_learning")  # the link the sweep prints
        text = browser.wait_text(["ui-smoke", "youcook2-smoke"])
        assert "/runs" in browser.eval("location.href") and "Training" in text  # dataset context
        browser.screenshot(tmp_path / "runs.png")
        assert f"{1 + len(trials)} matching runs" in text  # the trials are nested under the sweep
        for child in (r for r in runs if "mlflow.parentRunId" in r.data.tags):  # each trial's own page
            browser.open(f"{base}/runs/{child.info.run_id}?workflowType=machine_learning")
            browser.wait_text([child.info.run_name, "youcook2-smoke"])
        browser.screenshot(tmp_path / "trials.png")

        browser.open(f"{base}/runs/{parent.info.run_id}/artifacts/figures/optimization_history.png")
        browser.wait_text(["figures", "optimization_history.png", "parallel_coordinate.png", "iid_vs_ood.png"])
        deadline = time.time() + 60
        while time.time() < deadline:  # the artifact view renders the PNG
            width = browser.eval("Math.max(0, ...Array.from(document.images).map(i => i.naturalWidth))")
            if width and width > 500:
                break
            time.sleep(0.5)
        assert width and width > 500, "the figure was not rendered"
        browser.screenshot(tmp_path / "artifacts.png")
    finally:
        browser.close()
    for name in ("runs.png", "trials.png", "artifacts.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
