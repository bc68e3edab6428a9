"""Fault tolerance with real processes: a killed driver is resumed, a killed worker is retried."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep, study_trials, sweep_env


def _logged_epochs(db, trial_number: str | None = None) -> dict[str, int]:
    """trial_number -> highest epoch logged so far (read straight from the live SQLite store)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute(
            "select t.value, max(m.step) from metrics m join tags t on t.run_uuid = m.run_uuid "
            "where m.key = 'train/loss' and t.key = 'trial_number' group by t.value").fetchall()
        con.close()
    except sqlite3.Error:
        return {}
    return {k: int(v) for k, v in rows}


def _wait_for(predicate, proc, timeout=600, what=""):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"sweep ended before {what}: rc={proc.returncode}\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _children(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags], \
        [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _steps(client, run, key="train/loss"):
    return [int(m.step) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(tmp_path, slow_root):
    env = sweep_env(tmp_path, TUNE_GLOBAL_CHECKPOINT_S="1")
    args = ["method=stvg", f"data.root={slow_root}", "trials=3", "epochs=3", "concurrent=1", "scheduler=fifo",
            "name=resumable", "optim.batch_size=32"]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.sweep", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = tmp_path / "mlflow.db"
    # kill the driver once the second trial is training (the first one has finished)
    _wait_for(lambda: _logged_epochs(db).get("2", 0) >= 1, proc, what="trial 2's first epoch")
    time.sleep(1.5)  # let Tune write its experiment state once more
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    time.sleep(3)
    assert (tmp_path / "ray_results" / "resumable" / "sweep.json").exists()
    _, parents, children = _children(tmp_path)
    assert any(c.info.status == "RUNNING" for c in children)  # what the killed driver left behind

    done = run_sweep(tmp_path, "resume=resumable", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    client, parents, children = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the parent run is reused
    assert sorted(c.data.tags["trial_number"] for c in children) == ["1", "2", "3"]  # no duplicate child
    for c in children:
        assert c.info.status == "FINISHED"
        assert _steps(client, c) == [1, 2, 3], c.data.tags["trial_number"]  # no gap, no duplicate epoch
        # tested once, at the selected epoch, also for the trial the killed driver left unevaluated
        assert _steps(client, c, "test_ood/box_micro") == [int(c.data.tags["selected_epoch"])]
        assert c.data.tags["test_evaluated"] == "true"
    # the same Optuna study continued after the killed driver: one study trial per Tune trial
    trials = study_trials(tmp_path, "resumable")
    done_numbers = [t.number for t in trials if t.state.name == "COMPLETE"]
    assert len(done_numbers) == 3 and len(set(done_numbers)) == 3 and set(done_numbers) <= {0, 1, 2, 3}


def test_resume_of_an_unknown_sweep_is_a_clear_error(sweep):
    code, lines, _ = sweep("resume=nope")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: resume=nope: no sweep state (sweep.json) at ")


def test_resume_of_an_unfinished_sweep_of_the_earlier_layout_is_refused(sweep, tmp_path):
    """Tune pickled the earlier module paths of its callbacks: such a sweep is not restored."""
    import json

    exp = tmp_path / "elsewhere" / "old"
    exp.mkdir(parents=True)
    (exp / "sweep.json").write_text(json.dumps({"name": "old", "argv": ["method=stvg"], "data_digest": "x",
                                                "parent_run_id": "p"}))
    code, lines, _ = sweep(f"resume={exp}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: resume=old: the sweep was started by an earlier version of this project")


def _pids(pattern: str, mine: str) -> list[int]:
    """Processes matching ``pattern`` started for this test: their environment carries ``mine`` (the
    test's cache folder, which sweep_env sets), so another Ray job on the same machine is never hit."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    pids = []
    for p in (int(x) for x in out if int(x) != os.getpid()):
        try:
            env = open(f"/proc/{p}/environ", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"GROUNDING_CACHE_DIR={mine}" in env:
            pids.append(p)
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("workers, process", [(1, "ray::ImplicitFunc"), (2, "ray::RayTrainWorker")],
                         ids=["trial-actor", "ddp-worker"])
def test_killed_worker_retries_from_its_last_checkpoint(tmp_path, slow_root, workers, process):
    env = sweep_env(tmp_path)
    args = ["method=stvg", f"data.root={slow_root}", "trials=1", "epochs=5", "concurrent=1", "scheduler=fifo",
            f"workers={workers}", "cpus_per_worker=1" if workers == 1 else "cpus_per_worker=0.5",
            "failures=1", "name=retry"]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.sweep", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = tmp_path / "mlflow.db"
    mine = env["GROUNDING_CACHE_DIR"]
    _wait_for(lambda: _logged_epochs(db).get("1", 0) >= 2 and _pids(process, mine), proc, what="epoch 2")
    victims = _pids(process, mine)
    os.kill(victims[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    client, parents, children = _children(tmp_path)
    (child,) = children
    assert child.info.status == "FINISHED"
    assert _steps(client, child) == [1, 2, 3, 4, 5]  # the curve has no gap and no duplicate epoch
    resumed = [m.value for m in client.get_metric_history(child.info.run_id, "time/resumed_from_epoch")]
    assert max(resumed) >= 2  # the retry started from a checkpoint, not from scratch
