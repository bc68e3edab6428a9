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
