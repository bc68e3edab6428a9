"""``python -m orchestration.compare``: planning, bad input, and a real comparison (local Ray, MLflow)."""

from __future__ import annotations

import math
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import search_spaces
from _sweeps import sweep_env
from orchestration.tracking import summary as stats
from orchestration.cli.compare_args import parse
from orchestration.tracking.summary import TABLE_FILE
from orchestration.cli.sweep_args import ConfigError

T_975_DF1 = 12.706204736174704  # Student's t, 0.975 quantile, 1 degree of freedom (tables)


def run_compare(cwd, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "orchestration.compare", *args], cwd=cwd, env=sweep_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def test_summary_statistics_by_hand():
    s = stats.summarize([0.2, 0.4, 0.9])
    mean = 0.5
    std = math.sqrt(((0.2 - mean) ** 2 + (0.4 - mean) ** 2 + (0.9 - mean) ** 2) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)  # t(0.975, 2)
    assert (s.n, s.mean, s.std) == (3, pytest.approx(mean), pytest.approx(std))
    assert (s.ci_low, s.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    one = stats.summarize([0.3])
    assert one.std == 0.0 and math.isnan(one.ci_low) and stats.format_cell(one) == "30.0"
    assert stats.format_cell(stats.summarize([0.1, 0.3])).startswith("20.0 ± 14.1 [")


def test_cells_cover_methods_variants_and_seeds():
    cfg = parse(["methods=stvg,causal", "seeds=[3,5]", "variants=all", "model.bda=false", "optim.lr=0.002"])
    assert cfg.methods == ["stvg", "causal"] and cfg.seeds == [3, 5]
    causal_variants = list(search_spaces.variants("causal"))
    assert cfg.variants == causal_variants
    labels = [c.label() for c in cfg.cells]
    # seed-major: every row's seed 3 before any seed 5 (stvg declares no ablation)
    assert labels[:2] == ["stvg/base/seed3", "causal/base/seed3"]
    assert [c.seed for c in cfg.cells] == [3] * (len(cfg.cells) // 2) + [5] * (len(cfg.cells) // 2)
    assert len(cfg.cells) == 2 * (1 + 1 + len(causal_variants))
    paper, fixed = search_spaces.load("causal").PAPER, search_spaces.load("causal").FIXED
    for c in cfg.cells:
        assert c.params["lr"] == 0.002  # a pin wins over the point and the variant
        if c.method == "causal":
            assert c.params["bda"] is False and c.params["embed_dim"] == fixed["embed_dim"]
            assert c.params["J"] == paper["J"]
            for k, v in search_spaces.variants("causal").get(c.variant, {}).items():
                if k != "bda":
                    assert c.params[k] == v
        else:
            assert "bda" not in c.params  # a pin applies only where the method has it


@pytest.mark.parametrize("args, message", [
    (["methods=stvg,nope"], "error: methods: 'nope' is unknown; allowed: stvg, causal"),
    (["methods=causal", "variants=no_such"], "error: variants: 'no_such' is declared by none of causal"),
    (["methods=stvg", "seeds=0"], "error: seeds=0 is out of range; allowed: a count >= 1"),
    (["methods=stvg", "from_sweep=missing-sweep"], "error: from_sweep=missing-sweep: no MLflow store at"),
    (["methods=stvg,cpl"], "error: methods=stvg,cpl span several task families"),
    (["methods=stvg", "trials=4"], "error: unknown key 'trials' (a comparison trains fixed configurations"),
    (["methods=stvg", "model.bda=false"], "error: none of stvg has the model hyperparameter 'bda'"),
    (["methods=causal", "point=best"], "error: point=best is not declared for causal; allowed: paper, defaults"),
    ([], "error: methods= is required"),
])
def test_bad_input_is_one_line_and_exit_2_before_ray(sweep, args, message):
    code, lines, _ = sweep(*args, module="compare")  # the fixture also checks: no Ray, nothing written
    assert code == 2 and len(lines) == 1 and lines[0].startswith(message), lines


def test_from_sweep_needs_a_sweep_in_the_store(tmp_path):
    db = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(db).create_experiment("video-grounding")
    with pytest.raises(ConfigError, match="from_sweep=absent: no sweep named absent in MLflow experiment"):
        parse(["methods=stvg", "from_sweep=absent", f"mlflow.tracking_uri={db}"])


@pytest.fixture(scope="module")
def compared(tmp_path_factory, smoke_root):
    """One real comparison (2 methods x 2 seeds, 1 epoch) shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("compare")
    proc = run_compare(tmp_path, "methods=stvg,causal", "seeds=2", "epochs=1", f"data.root={smoke_root}",
                       "name=cmp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, proc


def test_compare_two_methods_two_seeds_one_parent_four_children_table_by_hand(compared):
    tmp_path, proc = compared
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    stage_runs = [r for r in runs if r.data.tags.get("kind") == "stage"]  # a staged method's shared backbone
    runs = [r for r in runs if r.data.tags.get("kind") != "stage"]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert len(stage_runs) == 2  # causal's stvg backbone, built once per seed (the stage key has the seed)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "compare"
    assert parent.data.tags["command"].startswith("python -m orchestration.compare methods=stvg,causal")
    cells = sorted((c.data.tags["method"], c.data.tags["variant"], c.data.tags["seed"]) for c in children)
    assert cells == [("causal", "base", "0"), ("causal", "base", "1"), ("stvg", "base", "0"), ("stvg", "base", "1")]
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.params["seed"] == c.data.tags["seed"]
        assert c.inputs.dataset_inputs[0].dataset.name == "youcook2-smoke"
        files = {a.path for a in client.list_artifacts(c.info.run_id, "model")}
        assert files == {"model/config.json", "model/selected.pt"}  # every cell's selected model
    assert parent.inputs.dataset_inputs[0].dataset.name == "youcook2-smoke"
    assert "figures/iid_vs_ood.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "compare_table.json" in parent.data.tags["mlflow.note.content"]

    mlflow.set_tracking_uri(uri)  # load_table searches through the fluent API
    table = client.load_table(exp.experiment_id, TABLE_FILE, run_ids=[parent.info.run_id])
    metric_names = ("box_macro", "box_micro", "query_macro", "query_micro")
    # (method, base) x (IID, OOD, val, and the last epoch's IID and OOD for reference) x metrics,
    # plus each row's budget (epochs run, stopped flat, selected epoch)
    assert len(table) == 2 * 5 * len(metric_names) + 2 * 3
    assert {row["split"] for _, row in table.iterrows()} == {"test_iid", "test_ood", "val", "last/test_iid",
                                                             "last/test_ood", "budget"}
    budget = table[table["split"] == "budget"]
    assert set(budget["metric"]) == {"epochs_run", "converged", "selected_epoch"}
    for _, row in budget[budget["metric"] == "epochs_run"].iterrows():  # no converge.patience: every epoch ran
        assert row["mean"] == pytest.approx(sum(c.data.metrics["epoch"] for c in children
                                                if c.data.tags["method"] == row["method"]) / 2)
    assert (budget[budget["metric"] == "converged"]["mean"] == 0).all()
    table = table[table["split"] != "budget"]
    for _, row in table.iterrows():
        vals = [c.data.metrics[f"{row['split']}/{row['metric']}"] for c in children
                if c.data.tags["method"] == row["method"]]
        mean = (vals[0] + vals[1]) / 2
        std = math.sqrt(((vals[0] - mean) ** 2 + (vals[1] - mean) ** 2) / 1)
        half = T_975_DF1 * std / math.sqrt(2)
        assert row["variant"] == "base" and row["n"] == 2
        # the MLflow table is JSON written by pandas with 10 significant digits
        assert row["mean"] == pytest.approx(mean, abs=1e-9)
        assert row["std"] == pytest.approx(std, abs=1e-9)
        assert row["ci95_low"] == pytest.approx(mean - half, abs=1e-9)
        assert row["ci95_high"] == pytest.approx(mean + half, abs=1e-9)
        if row["split"] == "test_ood":
            key = f"test_ood/{row['metric']}/{row['method']}.base/mean"
            assert parent.data.metrics[key] == pytest.approx(mean)
    md = client.download_artifacts(parent.info.run_id, "compare.md", str(tmp_path))
    text = open(md).read()
    assert "### OOD test" in text and "| stvg | base | 2 |" in text and "| causal | base | 2 |" in text
    assert "scoring: generated YouCook2-BB benchmark, its 5 frames per segment" in text  # the frames scored
    assert text.strip() in proc.stdout  # the same markdown is printed at the end
    assert "Trial status" not in proc.stdout and "[compare] done  causal/base/seed1" in proc.stdout


def run_evaluate(cwd, *args):
    return subprocess.run([sys.executable, "-m", "orchestration.evaluate", *args], cwd=cwd, env=sweep_env(cwd),
                          capture_output=True, text=True, timeout=600)


def test_evaluate_a_logged_model_and_refuse_incompatible_data(compared, smoke_roots, tmp_path, sweep):
    from grounding.data import benchmarks

    cwd, _ = compared
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    child = next(r for r in client.search_runs([exp.experiment_id], "tags.method = 'causal'")
                 if "mlflow.parentRunId" in r.data.tags)
    proc = run_evaluate(cwd, f"run={child.info.run_id}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scoring: generated YouCook2-BB benchmark, its 5 frames per segment" in proc.stdout
    (ev,) = client.search_runs([exp.experiment_id], "tags.kind = 'evaluation'")
    assert ev.data.tags["source_run"] == child.info.run_id
    assert ev.inputs.dataset_inputs[0].dataset.name == "youcook2-smoke"
    for split in ("test_iid", "test_ood", "val"):  # one epoch: the logged model is the reported one
        for m in ("box_macro", "box_micro", "query_macro", "query_micro"):
            assert ev.data.metrics[f"{split}/{m}"] == pytest.approx(child.data.metrics[f"{split}/{m}"], abs=1e-12)
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    per_class = client.load_table(exp.experiment_id, "per_class.json", run_ids=[ev.info.run_id])
    for split in ("test_iid", "test_ood"):
        rows = per_class[per_class["split"] == split]
        assert rows["box"].dropna().mean() == pytest.approx(ev.data.metrics[f"{split}/box_macro"], abs=1e-9)
    assert per_class[per_class["split"] == "test_ood"]["heldout"].any()  # OOD holds classes out of training

    other_d = tmp_path / "youcook2-D16"
    benchmarks.ensure(other_d, "youcook2", {**benchmarks.get("youcook2").smoke, "D": 16}, log=lambda m: None)
    store = f"mlflow.tracking_uri=sqlite:///{cwd / 'mlflow.db'}"
    for root, message in ((smoke_roots["moment"], "holds a moment dataset; the model (causal) needs wsvog"),
                          (str(other_d), "has feature size D=16; the model was trained on D=32")):
        code, lines, _ = sweep(f"run={child.info.run_id}", f"data.root={root}", store, module="evaluate")
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("error: data.root=") and message in lines[0], lines
    code, lines, _ = sweep("run=0123456789abcdef", store, module="evaluate")
    assert code == 2 and "no such MLflow run" in lines[0]
    code, lines, _ = sweep(f"run={child.info.run_id}", "members=spatial,nope", store, module="evaluate")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: members=spatial,nope: nope not a stage"), lines
    assert "allowed: a subset of spatial, temporal, deconf" in lines[0]
    code, lines, _ = sweep(f"run={child.info.run_id}", "model.inference=context", store, module="evaluate")
    assert code == 2 and lines == ["error: model.inference: not an option causal reads at prediction time; "
                                   "allowed: none for this method"], lines
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'evaluation'")) == 1  # nothing written
    # one component of the staged ensemble, recorded with the stages it kept
    proc = run_evaluate(cwd, f"run={child.info.run_id}", "members=spatial", "splits=test_iid")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stages spatial of spatial,temporal,deconf" in proc.stdout
    sub = next(r for r in client.search_runs([exp.experiment_id], "tags.kind = 'evaluation'")
               if r.data.tags.get("members") == "spatial")
    assert set(sub.data.metrics) == {f"test_iid/{m}" for m in ("box_macro", "box_micro", "query_macro", "query_micro")}


def test_bench_reads_a_staged_comparison_back(compared):
    """bench/_compare.read finds the comparison's parent among top-level runs that include causal's
    shared backbones (kind=stage) and returns its table and children as the benchmarks write them."""
    from bench._compare import read

    tmp_path, _ = compared
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = read("cmp", uri)
    client = MlflowClient(uri)
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["kind"] == "compare" and out["command"] == parent.data.tags["command"]
    assert sorted((r["method"], r["seed"]) for r in out["runs"]) == [("causal", 0), ("causal", 1), ("stvg", 0), ("stvg", 1)]
    for row in out["rows"]:
        if row["split"] != "test_iid":
            continue
        vals = [r["metrics"][f"test_iid/{row['metric']}"] for r in out["runs"] if r["method"] == row["method"]]
        assert row["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-8)
    assert "causal" in out["markdown"] and "stvg" in out["markdown"]  # the parent's compare.md
    with pytest.raises(SystemExit, match="no comparison named absent"):
        read("absent", uri)


def test_paired_gains_match_a_hand_computed_student_t_interval():
    """bench/_compare.paired: row a minus row b by training seed (seeds only one row has are
    dropped); the OOD-minus-IID form subtracts the IID gain seed by seed."""
    from bench._compare import paired, signed

    def row(variant, split, seeds, values):
        return {"method": "m", "variant": variant, "split": split, "metric": "acc", "seeds": ",".join(map(str, seeds)),
                "values": ",".join(map(str, values))}

    rows = [row("a", "test_iid", [0, 1, 2, 3], [0.5, 0.6, 0.7, 0.9]), row("b", "test_iid", [0, 1, 2], [0.4, 0.5, 0.5]),
            row("a", "test_ood", [0, 1, 2], [0.3, 0.3, 0.3]), row("b", "test_ood", [0, 1, 2], [0.1, 0.2, 0.0])]
    s = paired(rows, ("m", "a"), ("m", "b"), "acc", ("test_iid",))
    # differences 0.1, 0.1, 0.2: mean 0.1333, sample std 0.0577, t(0.975, 2) = 4.3027
    half = 4.302652729911275 * math.sqrt(1 / 300) / math.sqrt(3)
    assert s.n == 3 and s.mean == pytest.approx(0.4 / 3) and s.ci_high - s.mean == pytest.approx(half)
    d = paired(rows, ("m", "a"), ("m", "b"), "acc", ("test_ood", "test_iid"), (1, -1))
    # OOD gains 0.2, 0.1, 0.3 minus IID gains 0.1, 0.1, 0.2
    assert d.mean == pytest.approx(0.2 / 3) and signed(d).startswith("+6.7 [")
    assert paired(rows, ("m", "a"), ("m", "c"), "acc") is None and signed(None) == "-"
