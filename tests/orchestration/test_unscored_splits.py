"""A split without ground truth for a metric is not scored: the sweep summary and the compare
table print "-" for it, never 0 (the metrics are absent, grounding.metrics.wsvog)."""

from __future__ import annotations

from types import SimpleNamespace

from orchestration.tracking import summary as report
from orchestration.tracking import summary as compare

NAMES = ("box_macro", "box_micro", "query_macro", "query_micro")


def _run(metrics: dict, **tags):
    return SimpleNamespace(info=SimpleNamespace(run_id="abcdef0123456789", status="FINISHED"),
                           data=SimpleNamespace(metrics=metrics, params={}, tags={"trial_id": "t0", **tags}))


def test_summary_and_compare_show_a_dash_for_an_unscored_split():
    run = _run({"val/box_micro": 0.25, **{f"test_ood/{m}": 0.5 for m in NAMES}},
               method="causal", variant="default", seed="0")  # test_iid: no GT box, nothing logged
    text = report.summary("s", "causal", [run], "val/box_micro", NAMES, [], "mlflow ui")
    iid = next(ln for ln in text.splitlines() if ln.strip().startswith("IID"))
    assert "box_macro=-" in iid and "0.0000" not in iid
    row = next(ln for ln in text.splitlines() if ln.startswith("t0"))
    assert row.split()[5:9] == ["-"] * 4 and row.split()[9:13] == ["0.5000"] * 4
    groups = compare.group_results([run], NAMES, ["causal"], [])
    rows = compare.table_rows(groups)
    assert not [r for r in rows if r["split"] == "test_iid"]
    md = compare.markdown(rows, NAMES, "t")
    assert "### IID test" not in md and "### OOD test" in md  # no IID cell, so no 0 either
    val_row = next(ln for ln in md.split("### val")[1].splitlines() if ln.startswith("| causal"))
    assert val_row.strip(" |").split(" | ")[3:] == ["-", "25.0", "-", "-"]


def test_the_compare_table_states_each_rows_budget_and_how_many_trials_stopped_flat():
    runs = [_run({"test_iid/box_micro": 0.5, "epoch": e, "converge/flat": f, "selected_epoch": s},
                 method="stvg", variant="default", seed=str(i))
            for i, (e, f, s) in enumerate([(7, 1.0, 4), (12, 0.0, 12), (9, 1.0, 6)])]
    rows = compare.table_rows(compare.group_results(runs, NAMES, ["stvg"], []))
    md = compare.markdown(rows, NAMES, "t")
    line = next(ln for ln in md.split("### Budget")[1].splitlines() if ln.startswith("| stvg"))
    assert line.strip(" |").split(" | ") == ["stvg", "default", "3", "7–12", "2 of 3", "4–12"]


def test_tables_name_the_youcook2_scoring_setting(yc2_tiny):
    """Which frames of a YouCook2-BB segment are scored is named in the sweep summary and the
    comparison's markdown (and the evaluate table, the MLflow dataset tags): every annotated frame,
    the 5 centre frames (also a conversion from before the setting), or the generated benchmark's."""
    from grounding import tasks
    from grounding.data.shards import Dataset

    def data(**extra):
        return SimpleNamespace(manifest=SimpleNamespace(extra={"source": "youcook2_bb", **extra}, dims={"T": 5}))

    every = tasks.scoring_protocol(data(eval_frames="all"))
    centre = tasks.scoring_protocol(data(eval_frames="centre"))
    assert "every annotated frame" in every and "eval_frames=all" in every
    assert "5 centre frames" in centre and "eval_frames=centre" in centre and "not comparable" in centre
    assert tasks.scoring_protocol(data()) == centre  # converted before the setting: centre frames
    generated = tasks.scoring_protocol(Dataset.open(yc2_tiny))
    assert "generated YouCook2-BB benchmark" in generated and "5 frames per segment" in generated
    assert tasks.scoring_protocol(SimpleNamespace(manifest=SimpleNamespace(extra={"source": "anet_entities"},
                                                                           dims={"T": 10}))) is None
    run = _run({"val/box_micro": 0.25}, method="stvg", variant="default", seed="0")
    text = report.summary("s", "stvg", [run], "val/box_micro", NAMES, [], "mlflow ui", centre)
    assert text.splitlines()[1] == centre
    assert "scoring:" not in report.summary("s", "stvg", [run], "val/box_micro", NAMES, [], "mlflow ui")
    md = compare.markdown(compare.table_rows(compare.group_results([run], NAMES, ["stvg"], [])), NAMES, "t", every)
    assert md.splitlines()[2] == every
