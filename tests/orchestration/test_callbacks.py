"""The driver's Tune callbacks on mock trials and a real MLflow store (SQLite), no Ray: the trial
logger and its sender (child runs, curves, the one final-test record, an inference grid, resent
records), child naming for sweeps, comparisons and extensions, the final test and the progress lines."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
from mlflow.tracking import MlflowClient

from orchestration import callbacks
from orchestration.callbacks import Children, FinalTest, MlflowTrialLogger, ProgressLines
from orchestration.cli.compare_args import Cell
from orchestration.tracking import sender as sender_module
from orchestration.tracking.sender import Sender


def _trial(tid: str, number: int, config: dict | None = None, **extra):
    return types.SimpleNamespace(trial_id=tid, experiment_tag=f"{number}_lr=0.1", config=config or {}, **extra)


@pytest.fixture(scope="module")
def _db(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds): (client, experiment id)."""
    folder = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client, client.create_experiment("cb", artifact_location=str(folder / "art"))


@pytest.fixture
def store(_db):
    """(client, experiment id, parent run id): a new parent run of its own in the module's store."""
    client, exp = _db
    return client, exp, client.create_run(exp, run_name="sweep").info.run_id


def _logger(store, tmp_path, children: Children, epochs: int = 3) -> MlflowTrialLogger:
    client, exp, parent = store
    logger = MlflowTrialLogger(client.tracking_uri, exp, parent, epochs, children,
                               pending_path=str(tmp_path / "pending.json"))
    sender_module._SENDERS[parent] = Sender(client.tracking_uri, exp, parent, epochs,  # the sweep's one sender
                                            str(tmp_path / "pending.json"))
    return logger


def _children(client, exp, parent):
    return {r.data.tags["trial_id"]: r for r in client.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")}


def test_a_trial_becomes_one_child_with_curves_a_final_record_and_an_end(store, tmp_path):
    client, exp, parent = store
    logger = _logger(store, tmp_path, Children("s", "stvg", fixed={"embed_dim": 16}))
    t = _trial("a1", 1, {"lr": 0.001})
    logger.on_trial_start(0, [], t)
    for epoch in (1, 2, 2):  # epoch 2 twice: a trial restored from an older checkpoint logs it once
        logger.on_trial_result(0, [], t, {"epoch": epoch, "train/loss": 1.0 / epoch, "val/box_micro": 0.1 * epoch,
                                          "tag/stage.backbone.sha256": "abc", "config": {"not": "a metric"}})
    final = {"selected_epoch": 2, "last_epoch": 2, "test_iid/box_micro": 0.3, "test_ood/box_micro": 0.2,
             "last/test_iid/box_micro": 0.25, "time/test_s": 1.5, "stages": {"backbone": 1}}
    logger.log_final("a1", final)
    logger.on_trial_complete(0, [], t)
    assert logger.sender.close(30)
    run = _children(client, exp, parent)["a1"]
    assert run.info.run_name == "s-a1" and run.info.status == "FINISHED"
    assert run.data.params == {"embed_dim": "16", "lr": "0.001", "method": "stvg", "trial_id": "a1"}
    tags = run.data.tags
    assert (tags["trial_number"], tags["sweep"], tags["selected_epoch"], tags["test_evaluated"]) == ("1", "s", "2", "true")
    assert tags["stage.backbone.sha256"] == "abc" and tags["stage.backbone.selected_epoch"] == "1"
    assert tags["epochs_completed"] == "2" and tags["stopped_early"] == "true"  # 2 of 3 epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/box_micro")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_iid/box_micro")] == [2]
    assert run.data.metrics["last/test_iid/box_micro"] == 0.25 and run.data.metrics["time/test_s"] == 1.5
    assert not (tmp_path / "pending.json").exists()


def test_the_inference_grid_is_written_once_with_its_figure(store, tmp_path):
    client, exp, parent = store
    logger = _logger(store, tmp_path, Children("s", "vcma"))
    logger.on_trial_start(0, [], _trial("g1", 1))
    rows = [{"beta": b / 10, "m_viou": 0.1 + b / 100, "m_viou_declarative": 0.2} for b in range(11)]
    result = {"selected_epoch": 2, "test_iid/m_viou": 0.2, "time/inference_grid_s": 0.5,
              "inference_grid": {"split": "val", "metric": "m_viou", "rows": rows, "trained": {"beta": 0.3},
                                 "selected": 0.13}}
    logger.log_final("g1", result)
    logger.sender._verify = True  # as after a lost answer: the resent record is recognised
    logger.log_final("g1", result)
    assert logger.sender.close(30)
    run_id = _children(client, exp, parent)["g1"].info.run_id
    files = {a.path for a in client.list_artifacts(run_id, "inference_grid")}
    assert files == {"inference_grid/beta.json", "inference_grid/beta.png"}
    table = json.load(open(client.download_artifacts(run_id, "inference_grid/beta.json", str(tmp_path))))
    assert table["columns"] == ["beta", "m_viou", "m_viou_declarative"]
    assert [r[0] for r in table["data"]] == [b / 10 for b in range(11)]  # not appended twice
    run = client.get_run(run_id)
    assert run.data.tags["test_evaluated"] == "true" and run.data.metrics["time/inference_grid_s"] == 0.5


def test_comparison_cells_and_extension_trials_are_named_and_tagged_by_what_they_are():
    cell = Cell("causal", "no_bda", 3, {"lr": 0.01}, point="paper")
    t = _trial("c1", 4, {"cell": dataclasses.asdict(cell)})
    cells = Children("cmp", "stvg", cells=True)
    assert cells.name(t) == "cmp-causal-no_bda-seed3"
    assert cells.tags(t) | {"trial_id": "c1"} == {"trial_id": "c1", "sweep": "cmp", "method": "causal", "variant": "no_bda",
                                                  "seed": "3", "point": "paper", "trial_number": "4"}
    assert cells.params(t) == {"lr": 0.01, "method": "causal", "variant": "no_bda", "seed": 3, "trial_id": "c1"}
    ext = Children("s", "stvg", trial_offset=8, extension="ext-1")
    e = _trial("e1", 2, {"lr": 0.1})
    assert ext.name(e) == "s-e1" and ext.tags(e)["trial_number"] == "10" and ext.tags(e)["extension"] == "ext-1"


def test_the_experiment_end_leaves_no_child_running(store, tmp_path):
    client, exp, parent = store
    logger = _logger(store, tmp_path, Children("s", "stvg"))
    logger.on_trial_start(0, [], _trial("r1", 1))  # a trial that never reported
    logger.on_experiment_end([])
    assert logger.sender.close(30)
    assert _children(client, exp, parent)["r1"].info.status == "KILLED"


def test_the_logger_pickles_without_credentials(store, tmp_path):
    logger = _logger(store, tmp_path, Children("s", "stvg"))
    logger.tracking_uri = "http://user:hunter2@mlflow.example:5000"
    assert "hunter2" not in str(logger.__getstate__())


class _Ref:
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """``ray.wait``/``ray.get`` over already computed values: the final-test task runs inline."""

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return list(refs)[:max(num_returns, len(refs)) if timeout == 0 else num_returns], []

    @staticmethod
    def get(ref):
        if isinstance(ref.value, Exception):
            raise ref.value
        return ref.value


def test_final_test_evaluates_each_ended_trial_once_and_logs_through_the_sender(monkeypatch, make_spec):
    evaluated, logged = [], []
    task = types.SimpleNamespace(remote=lambda ckpt, spec: evaluated.append(ckpt) or _Ref(
        RuntimeError("boom") if ckpt == "bad" else {"selected_epoch": 1, "ckpt": ckpt}))
    monkeypatch.setattr(callbacks, "_final_task", lambda: task)
    monkeypatch.setattr(callbacks, "ray", _FakeRay)
    monkeypatch.setattr(callbacks, "trial_checkpoint", lambda ckpt, result, path: ckpt)
    logger = types.SimpleNamespace(log_final=lambda tid, result: logged.append((tid, result["ckpt"])))
    ft = FinalTest(make_spec(), logger, max_in_flight=1)
    for tid, ckpt in (("t1", "c1"), ("t2", "bad"), ("t3", None), ("t4", "c4")):
        ft.on_trial_complete(0, [], _trial(tid, 1, checkpoint=ckpt, last_result={}))
    assert evaluated == ["c1"]  # one in flight at a time; t3 has no checkpoint
    ft.on_step_begin(0, [])
    ft.on_experiment_end([])
    assert evaluated == ["c1", "bad", "c4"] and logged == [("t1", "c1"), ("t4", "c4")]  # a failed one is skipped
    assert ft.__getstate__()["_pending"] == {} and ft.__getstate__()["_queue"] == []


def test_progress_lines_say_start_end_best_and_failure(capsys):
    p = ProgressLines("val/box_micro", total=2, label=lambda t: f"cell-{t.trial_id}")
    a, b = _trial("a", 1), _trial("b", 2, error_file="/tmp/err.txt")
    p.on_trial_start(0, [], a)
    p.on_trial_result(0, [], a, {"val/box_micro": 0.4321, "epoch": 3})
    p.on_trial_complete(0, [], a)
    p.on_trial_error(0, [], b)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[sweep] start cell-a (1/2 started")
    assert "done  cell-a: val/box_micro 0.4321 after 3 epochs" in out[1] and "1/2 ended, best 0.4321" in out[1]
    assert out[2] == "[sweep] FAILED cell-b (2/2 ended): /tmp/err.txt"
    assert p.__getstate__()["label"] is None  # labels may be lambdas: not pickled
