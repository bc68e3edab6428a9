"""A finished sweep extended with more trials continues its persisted Optuna study (real local Ray,
real MLflow SQLite store, the real journal file)."""

from __future__ import annotations

import json
import pickle

import pytest

import optuna
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep


def _study(tmp_path, name):
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "ray_results" / name / "optuna.journal"
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


@pytest.mark.slow  # two sweeps: about 4 minutes on a loaded 2-core box
def test_a_finished_sweep_is_extended_without_repeating_its_trials(tmp_path, smoke_root, ray_address, sweep):
    ray = f"ray.address={ray_address}"
    first = run_sweep(tmp_path, "method=stvg", "smoke=true", f"data.root={smoke_root}", "trials=2", "name=ext", ray)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = [t.params for t in _study(tmp_path, "ext").trials]
    assert len(before) == 2

    # no more trials than it ran: one line, exit 2, nothing started
    code, lines, _ = sweep(f"resume={tmp_path / 'ray_results' / 'ext'}", "trials=2")  # in process, Ray a tripwire
    assert code == 2 and lines == [
        "error: trials=2 is out of range for resume=ext, which already ran 2 trials; allowed: more than 2 "
        "(the extra trials extend the sweep)"]

    more = run_sweep(tmp_path, "resume=ext", "trials=3", ray)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "extending ext by 1 trial(s) after its 2 in ext-1" in more.stdout
    study = _study(tmp_path, "ext")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert [t.params for t in study.trials[:2]] == before  # the first trials are kept, not rerun
    assert study.trials[2].params not in before  # neither the PAPER point nor a replay of the seeded first draw
    # the sampler carried over: the first run's pickled sampler, asked once more after its two trials,
    # draws exactly the extension's trial (a sampler seeded afresh would start its draws over)
    (saved,) = (tmp_path / "ray_results" / "ext").glob("searcher-state-*.pkl")
    searcher = pickle.loads(saved.read_bytes())
    replay = optuna.create_study(direction="maximize", sampler=searcher["_sampler"])
    for t in study.trials[:2]:
        replay.add_trial(t)
    asked = replay.ask()
    searcher["_space"](asked)
    assert asked.params == study.trials[2].params
    state = json.loads((tmp_path / "ray_results" / "ext" / "sweep.json").read_text())
    assert state["finished"] is True and state["extensions"] == [{"folder": "ext-1", "trials": 1, "finished": True}]
    assert (tmp_path / "ray_results" / "ext" / "ext-1").is_dir()

    parents, children = _runs(tmp_path)
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["trial_number"] for c in children) == ["1", "2", "3"]
    (new,) = [c for c in children if c.data.tags.get("extension") == "ext-1"]
    assert new.data.tags["trial_number"] == "3" and new.info.status == "FINISHED"
    for k, v in study.trials[2].params.items():
        assert new.data.params[k] == str(v)
    assert "3 trials" in parent.data.tags["mlflow.note.content"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = client.download_artifacts(parent.info.run_id, "summary.txt", str(tmp_path))
    text = open(summary).read()
    assert all(c.info.run_id[:8] in text or c.data.tags["trial_number"] in text for c in children)
    assert "figures/optimization_history.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}

    # a driver killed after recording a second extension but before Tune saved its first state:
    # resume= starts that extension again instead of refusing
    state["extensions"].append({"folder": "ext-2", "trials": 1, "finished": False})
    (tmp_path / "ray_results" / "ext" / "sweep.json").write_text(json.dumps(state))
    (tmp_path / "ray_results" / "ext" / "ext-2").mkdir()
    again = run_sweep(tmp_path, "resume=ext", ray)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "ext-2 stopped before Tune saved its state: starting its 1 trial(s) again" in again.stdout
    assert "extending ext by 1 trial(s) after its 3 in ext-2" in again.stdout
    assert [t.number for t in _study(tmp_path, "ext").trials] == [0, 1, 2, 3]
    state = json.loads((tmp_path / "ray_results" / "ext" / "sweep.json").read_text())
    assert [e["folder"] for e in state["extensions"]] == ["ext-1", "ext-2"] and state["extensions"][-1]["finished"]
    _, children = _runs(tmp_path)
    assert sorted(c.data.tags["trial_number"] for c in children) == ["1", "2", "3", "4"]


def test_extension_plan_and_its_bad_requests(tmp_path, capsys):
    from orchestration.search import extend

    exp = str(tmp_path / "ray_results" / "s")
    done = {"finished": True, "extensions": [{"folder": "ext-1", "trials": 2, "finished": True}]}
    assert extend.planned(done, 4) == 6
    assert extend.latest(done, exp) == (f"{exp}/ext-1", True)
    assert extend.latest({"finished": False}, exp) == (exp, False)
    assert extend.plan(done, 4, None, exp, "s", "") is None  # plain resume=
    ext = extend.plan(done, 4, 9, exp, "s", "")
    assert (ext.index, ext.folder, ext.trials, ext.before) == (2, "ext-2", 3, 6)
    for state, asked, message in [
            (done, 6, "error: trials=6 is out of range for resume=s, which already ran 6 trials; allowed: more than 6"),
            ({"finished": True}, 3, "error: trials=3 is out of range for resume=s, which already ran 4 trials"),
            ({"finished": True, "extensions": [{"folder": "ext-1", "trials": 1, "finished": False}]}, 9,
             "error: resume=s trials=9: the sweep has not finished its 5 trials"),
            ({}, 9, "error: resume=s trials=9: the sweep has not finished its 4 trials")]:
        with pytest.raises(SystemExit) as e:
            extend.plan(state, 4, asked, exp, "s", "")
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(message), err
    killed = {"finished": True, "extensions": [{"folder": "ext-1", "trials": 2, "finished": True},
                                               {"folder": "ext-2", "trials": 3, "finished": False}]}
    again = extend.unsaved(killed, 9)  # ext-2 never saved a Tune state: it starts again
    assert (again.index, again.folder, again.trials, again.before) == (2, "ext-2", 3, 6)
    assert [e["folder"] for e in killed["extensions"]] == ["ext-1"]
    assert extend.unsaved(done, 6) is None and extend.unsaved({"finished": False}, 4) is None
    with pytest.raises(SystemExit):  # an object store without an RDB study: nothing to extend from
        extend.plan({"finished": True}, 4, 9, "s3://bucket/ray_results/s", "s", "")
    assert "not persisted" in capsys.readouterr().err
    assert extend.plan({"finished": True}, 4, 9, "s3://bucket/ray_results/s", "s", "sqlite:///x.db").trials == 5
