"""Real processes, real failures: a signal sent to a running sweep, a tracking server that stops
and comes back in the middle of one, and credentials searched for in everything a sweep wrote."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep, study_trials, sweep_env
from test_resume_failures import _logged_epochs, _wait_for

NATIVE_DUMP = ("*** SIGTERM received", "*** SIGINT received", "Fatal Python error", "Stack (most recent call first)",
               "logging.cc")


def _runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return (client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def _steps(client, run, key="train/loss"):
    return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_sweep_cleanly_and_it_resumes(tmp_path, slow_root, sig, sweep):
    env = sweep_env(tmp_path, TUNE_GLOBAL_CHECKPOINT_S="1")
    args = ["method=stvg", f"data.root={slow_root}", "trials=3", "epochs=3", "concurrent=1", "scheduler=fifo",
            "name=sig", "optim.batch_size=32"]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.sweep", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = tmp_path / "mlflow.db"
    _wait_for(lambda: _logged_epochs(db).get("1", 0) >= 1, proc, what="trial 1's first epoch")
    os.kill(proc.pid, sig)  # the driver alone, as `kill` or a job scheduler sends it
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, out[-3000:] + err[-3000:]
    for marker in NATIVE_DUMP:
        assert marker not in out and marker not in err, (marker, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert "resume=sig" in out
    assert "sweep sig (stvg)" in out  # the summary so far
    client, parents, children = _runs(f"sqlite:///{db}")
    (parent,) = parents
    assert parent.info.status == "KILLED"
    summary = client.download_artifacts(parent.info.run_id, "summary.txt", str(tmp_path))
    assert "interrupted: continue with python -m orchestration.sweep resume=sig" in Path(summary).read_text()
    assert all(c.info.status != "RUNNING" for c in children)
    asked_before = len(study_trials(tmp_path, "sig"))
    assert 1 <= asked_before <= 3
    if sig == signal.SIGINT:
        return  # what follows a stop (resume, extension refused) is the same for both signals: SIGTERM runs it
    # more trials only for a finished sweep: one line, exit 2
    code, lines, _ = sweep(f"resume={tmp_path / 'ray_results' / 'sig'}", "trials=5")  # in process, Ray a tripwire
    assert code == 2 and lines[0].startswith("error: resume=sig trials=5: the sweep has not finished its 3 trials")

    done = run_sweep(tmp_path, "resume=sig", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    client, parents, children = _runs(f"sqlite:///{db}")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["trial_number"] for c in children) == ["1", "2", "3"]
    # the same Optuna study continued: the interrupted trial is told, not asked again
    trials = study_trials(tmp_path, "sig")
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    for c in children:
        assert c.info.status == "FINISHED"
        assert _steps(client, c) == [1, 2, 3], c.data.tags["trial_number"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and local artifacts, stoppable and restartable."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, _free_port(), None
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                import urllib.request

                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None


@pytest.mark.slow
def test_mlflow_outage_mid_sweep_loses_nothing_and_no_credential_is_recorded(tmp_path, slow_root):
    """The tracking server stops after the first epoch and comes back later; the sweep trains on,
    writes what waited, and reports the delay. The run also carries credentials everywhere a user
    might put them (AWS variables, a profile file, user:password@ in the tracking URI) and every
    file it wrote is searched for them."""
    secrets = {"AWS_SECRET_ACCESS_KEY": "envsecret-93d1a7", "AWS_ACCESS_KEY_ID": "AKIAENVKEY93D1",
               "profile": "profilesecret-5b2e", "password": "uripassword-77c0"}
    creds = tmp_path / "aws_credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAPROFILE5B2E\naws_secret_access_key = {secrets['profile']}\n")
    server = MlflowServer(tmp_path / "server")
    server.start()
    work = tmp_path / "work"
    work.mkdir()
    uri = f"http://alice:{secrets['password']}@127.0.0.1:{server.port}"
    env = sweep_env(work, AWS_SECRET_ACCESS_KEY=secrets["AWS_SECRET_ACCESS_KEY"],
                    AWS_ACCESS_KEY_ID=secrets["AWS_ACCESS_KEY_ID"], AWS_SHARED_CREDENTIALS_FILE=str(creds),
                    GROUNDING_MLFLOW_END_WAIT_S="240")
    # enough epochs that training is still going when the first one shows in MLflow: on a fast
    # machine 2 trials x 3 epochs were over before the records (sent from a queue) arrived
    epochs = 8
    args = ["method=stvg", f"data.root={slow_root}", "trials=2", f"epochs={epochs}", "concurrent=1",
            "scheduler=fifo", "name=outage", "optim.batch_size=32", f"mlflow.tracking_uri={uri}"]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.sweep", *args], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def first_epoch():
            try:
                _, _, children = _runs(server.url)
                return any(c.data.metrics.get("train/loss") is not None for c in children)
            except Exception:
                return False

        _wait_for(first_epoch, proc, what="the first epoch in MLflow")
        server.stop()
        t_down = time.time()
        # trials keep training while the server is away: Tune checkpoints another epoch meanwhile
        # (a new checkpoint name: old ones are pruned, so counting them proves nothing)
        ckpts = lambda: {p.relative_to(work) for p in (work / "ray_results" / "outage").glob("trial_fn_*/checkpoint_*")}  # noqa: E731
        before = ckpts()
        _wait_for(lambda: bool(ckpts() - before) and time.time() - t_down > 8, proc, timeout=600,
                  what="a checkpoint while MLflow is down")
        server.start()
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0, out[-4000:] + err[-4000:]
        client, parents, children = _runs(server.url)
        (parent,) = parents
        assert parent.info.status == "FINISHED"
        assert sorted(c.data.tags["trial_number"] for c in children) == ["1", "2"]
        for c in children:
            assert c.info.status == "FINISHED"
            assert _steps(client, c) == list(range(1, epochs + 1))  # no epoch missing, none twice
            assert _steps(client, c, "epoch") == list(range(1, epochs + 1))
            assert len(_steps(client, c, "test_ood/box_micro")) == 1  # tested once, at its selected epoch
        assert "was unreachable" in out and "Delayed and written when it was back" in out, out[-3000:]
        assert "Nothing is missing." in out
        summary = Path(client.download_artifacts(parent.info.run_id, "summary.txt", str(tmp_path))).read_text()
        assert "was unreachable" in summary
        assert not list(work.rglob("mlflow_pending.json"))  # everything was sent

        # no credential in any param, tag, log line or file the sweep (or the server) wrote
        for r in [*parents, *children]:
            for value in [*r.data.params.values(), *r.data.tags.values()]:
                for s in secrets.values():
                    assert s not in value, (s, value)
        for s in secrets.values():
            assert s not in out and s not in err, s
        files = [p for p in [*work.rglob("*"), *(tmp_path / "server").rglob("*")] if p.is_file()]
        assert any(p.name == "sweep.json" for p in files)
        for p in files:
            data = p.read_bytes()
            for s in secrets.values():
                assert s.encode() not in data, (s, p)
    finally:
        server.stop()
