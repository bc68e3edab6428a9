"""The end-of-sweep summary, built from MLflow (the source of truth, also after a resume)."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def summary(sweep: str, method: str, runs: list, metric_key: str, metric_names: tuple[str, ...],
            searched: list[str], ui: str) -> str:
    ranked = sorted(runs, key=lambda r: r.data.metrics.get(metric_key, float("-inf")), reverse=True)
    lines = [f"sweep {sweep} ({method}): {len(runs)} trials, ranked by {metric_key} of each trial's selected checkpoint", ""]
    header = ["trial", "status", "epochs", "selected", metric_key] + [f"iid/{m}" for m in metric_names] + [f"ood/{m}" for m in metric_names]
    rows = []
    for r in ranked:
        m = r.data.metrics
        rows.append([r.data.tags.get("trial_id", r.info.run_id[:8]), r.info.status,
                     r.data.tags.get("epochs_completed", "-"), r.data.tags.get("selected_epoch", "-"),
                     m.get(metric_key)]
                    + [m.get(f"test_iid/{k}") for k in metric_names] + [m.get(f"test_ood/{k}") for k in metric_names])
    lines.append(table(rows, header))
    if ranked and metric_key in ranked[0].data.metrics:
        best = ranked[0]
        lines += ["", f"best trial {best.data.tags.get('trial_id')} (MLflow run {best.info.run_id}):"]
        cfg = {k: best.data.params[k] for k in searched if k in best.data.params}
        lines.append("  config  " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
        for split, label in (("test_iid", "IID "), ("test_ood", "OOD ")):
            vals = ", ".join(f"{k}={_fmt(best.data.metrics.get(f'{split}/{k}'))}" for k in metric_names)
            lines.append(f"  {label}    {vals}")
    lines += ["", "compare the trials in MLflow:", f"  {ui}"]
    return "\n".join(lines)
