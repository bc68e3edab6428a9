"""What a sweep or a comparison reports, built from MLflow's runs (the source of truth, also after
a resume); plain functions of run records, no MLflow calls.

- :func:`summary`, :func:`table`: the end-of-sweep ranking printed and stored as ``summary.txt``
- :func:`summarize`, :class:`Summary`, :func:`format_cell`: a metric over seeds — mean, sample std and
  the 95% confidence interval of the mean from Student's t. With n seeds the interval is
  ``mean ± t(0.975, n - 1) · std / sqrt(n)`` (``std`` with ``ddof=1``); a single seed has no spread:
  its std is 0 and its interval is undefined (NaN), and the tables say so instead of printing a
  zero-width interval.
- :func:`group_results`, :func:`table_rows`, :func:`markdown`: a comparison's table per
  (method, variant, split, metric)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from scipy import stats as scipy_stats

import search_spaces

SPLITS = ("test_iid", "test_ood", "val", "last/test_iid", "last/test_ood")
BUDGET = "budget"  # per trial: epochs it ran, 1 if it stopped flat (converge.patience), its selected epoch
BUDGET_METRICS = ("epochs_run", "converged", "selected_epoch")
SPLIT_LABELS = {"test_iid": "IID test", "test_ood": "OOD test", "val": "val",
                "last/test_iid": "IID test, last epoch (not selected; for reference)",
                "last/test_ood": "OOD test, last epoch (not selected; for reference)"}
TABLE_FILE = "compare_table.json"
MARKDOWN_FILE = "compare.md"

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for n == 1
    ci_low: float  # NaN for n == 1
    ci_high: float


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(scipy_stats.t.ppf(p, df))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = math.fsum(vals) / n
    if n == 1:
        return Summary(1, mean, 0.0, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def format_cell(s: Summary, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std [ci_low, ci_high]`` in percent (``scale``); a single seed prints its value."""
    if s.n == 1:
        return f"{scale * s.mean:.{digits}f}"
    return (f"{scale * s.mean:.{digits}f} ± {scale * s.std:.{digits}f} "
            f"[{scale * s.ci_low:.{digits}f}, {scale * s.ci_high:.{digits}f}]")


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
            searched: list[str], ui: str, protocol: str | None = None) -> str:
    """The sweep's closing table; ``protocol``: the data's scoring line (``grounding.tasks.scoring_protocol``)."""
    ranked = sorted(runs, key=lambda r: r.data.metrics.get(metric_key, float("-inf")), reverse=True)
    lines = [f"sweep {sweep} ({method}): {len(runs)} trials, ranked by {metric_key} of each trial's selected checkpoint",
             *([protocol] if protocol else []), ""]
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


def group_results(runs: list, metric_names: tuple[str, ...], methods: list[str], variants: list[str]):
    """``{(method, variant): {split: {metric: [(seed, value), ...]}}}`` from the child runs' final metrics."""
    order = {m: i for i, m in enumerate(methods)}
    vorder = {v: i for i, v in enumerate([search_spaces.RESERVED_VARIANT, *variants])}
    groups: dict[tuple[str, str], dict] = {}
    for r in sorted(runs, key=lambda r: (order.get(r.data.tags.get("method"), 99),
                                         vorder.get(r.data.tags.get("variant"), 99), int(r.data.tags.get("seed", 0)))):
        if r.info.status != "FINISHED":
            continue
        key = (r.data.tags["method"], r.data.tags["variant"])
        g = groups.setdefault(key, {sp: {m: [] for m in metric_names} for sp in SPLITS})
        for sp in SPLITS:
            for m in metric_names:
                v = r.data.metrics.get(f"{sp}/{m}")
                if v is not None:
                    g[sp][m].append((int(r.data.tags["seed"]), float(v)))
        b = g.setdefault(BUDGET, {m: [] for m in BUDGET_METRICS})
        for m, key in zip(BUDGET_METRICS, ("epoch", "converge/flat", "selected_epoch")):
            v = r.data.metrics.get(key, r.data.tags.get(key))  # selected_epoch: a tag of the child run
            if v is not None:
                b[m].append((int(r.data.tags["seed"]), float(v)))
    return groups


def table_rows(groups: dict) -> list[dict]:
    """One row per (method, variant, split, metric): the MLflow table."""
    rows = []
    for (method, variant), per_split in groups.items():
        for sp, per_metric in per_split.items():
            for m, pairs in per_metric.items():
                if not pairs:
                    continue
                s = summarize([v for _, v in pairs])
                rows.append({"method": method, "variant": variant, "split": sp, "metric": m, "n": s.n,
                             "mean": s.mean, "std": s.std, "ci95_low": s.ci_low, "ci95_high": s.ci_high,
                             "seeds": ",".join(str(seed) for seed, _ in pairs),
                             "values": ",".join(f"{v:.6f}" for _, v in pairs)})
    return rows


def markdown(rows: list[dict], metric_names: tuple[str, ...], title: str, protocol: str | None = None) -> str:
    """The comparison's tables; ``protocol``: the data's scoring line (``grounding.tasks.scoring_protocol``)."""
    lines = [f"## {title}", "", *([protocol, ""] if protocol else []),
             "Mean ± sample std over seeds [95% confidence interval of the mean, Student's t], in %."]
    for sp in SPLITS:
        sub = [r for r in rows if r["split"] == sp]
        if not sub:
            continue
        lines += ["", f"### {SPLIT_LABELS[sp]}", "",
                  "| method | variant | seeds | " + " | ".join(metric_names) + " |",
                  "|---|---|---:|" + "---:|" * len(metric_names)]
        keys = list(dict.fromkeys((r["method"], r["variant"]) for r in sub))
        for method, variant in keys:
            cells, n = [], 0
            for m in metric_names:
                r = next((r for r in sub if (r["method"], r["variant"], r["metric"]) == (method, variant, m)), None)
                if r is None:
                    cells.append("-")
                    continue
                n = r["n"]
                cells.append(format_cell(Summary(r["n"], r["mean"], r["std"], r["ci95_low"], r["ci95_high"])))
            lines.append(f"| {method} | {variant} | {n} | " + " | ".join(cells) + " |")
    lines += _budget_section([r for r in rows if r["split"] == BUDGET])
    return "\n".join(lines)


def _span(row: dict | None) -> str:
    """``low–high`` of a budget row's per-trial values ("-" without the row)."""
    if row is None:
        return "-"
    values = [int(float(x)) for x in row["values"].split(",")]
    return f"{min(values)}–{max(values)}"


def _budget_section(budget: list[dict]) -> list[str]:
    """The markdown's Budget section from the table's ``budget`` rows (none: no section)."""
    if not budget:
        return []
    lines = ["", "### Budget", "",
             "Per trial: epochs run, whether it stopped with a flat validation curve (converge.patience; "
             "0 of n: every trial ran out of epochs) and its selected (best-validation) epoch.", "",
             "| method | variant | seeds | epochs run | stopped flat | selected epoch |", "|---|---|---:|---|---:|---|"]
    for method, variant in dict.fromkeys((r["method"], r["variant"]) for r in budget):
        get = {r["metric"]: r for r in budget if (r["method"], r["variant"]) == (method, variant)}
        conv = get.get("converged")
        flat = f"{round(conv['mean'] * conv['n'])} of {conv['n']}" if conv else "-"
        n = max(r["n"] for r in get.values())
        lines.append(f"| {method} | {variant} | {n} | {_span(get.get('epochs_run'))} | {flat} | "
                     f"{_span(get.get('selected_epoch'))} |")
    return lines
