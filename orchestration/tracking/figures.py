"""Figures logged to MLflow with ``log_figure``: matplotlib PNGs (the MLflow UI's artifact view
shows them as images; plotly's HTML would need plotly, which the stack does not ship).

* per trial (child run): ``figures/learning_curves.png`` — train loss and every validation
  metric per epoch, the test metrics where they were evaluated;
* per sweep (parent run), from its Optuna study: ``figures/optimization_history.png``,
  ``figures/param_importances.png`` (fANOVA), ``figures/parallel_coordinate.png``, and from the
  child runs ``figures/iid_vs_ood.png`` (each trial's IID against its OOD test metric);
* per comparison (parent run): ``figures/iid_vs_ood.png`` (every cell, one colour per method and
  variant).
* per trial of a model with inference-only knobs (``vcma``'s beta, :mod:`grounding.inference_grid`):
  ``inference_grid/<knob>.png`` — the validation metric of the selected checkpoint against the
  knob, the trained value marked — beside its table ``inference_grid/<knob>.json`` (knob and
  every validation metric per grid point; MLflow's table format, ``client.log_table``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.visualization import matplotlib as ovm  # noqa: E402

log = logging.getLogger(__name__)
DIR = "figures"


def _save(client, run_id: str, fig, name: str) -> str:
    path = f"{DIR}/{name}.png"
    try:
        fig.tight_layout()
    except Exception:  # tight_layout cannot fit some optuna figures; the figure is still fine
        pass
    client.log_figure(run_id, fig, path, save_kwargs={"dpi": 110})
    plt.close(fig)
    return path


def learning_curves(client, run_id: str, title: str = "") -> str | None:
    """Train loss and validation (and test) metrics per epoch of one trial, from MLflow."""
    run = client.get_run(run_id)
    keys = sorted(run.data.metrics)
    loss = client.get_metric_history(run_id, "train/loss") if "train/loss" in keys else []
    evals = [k for k in keys if k.startswith(("val/", "test_iid/", "test_ood/"))]
    if not loss and not evals:
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    if loss:
        ax0.plot([m.step for m in loss], [m.value for m in loss], marker="o")
    ax0.set(xlabel="epoch", ylabel="train/loss", title="training loss")
    styles = {"val": "-", "test_iid": "--", "test_ood": ":"}
    for k in evals:
        hist = sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)
        ax1.plot([m.step for m in hist], [m.value for m in hist], styles[k.split("/")[0]], marker="o",
                 label=k, markersize=3)
    ax1.set(xlabel="epoch", ylabel="metric", title="validation and test metrics")
    if evals:
        ax1.legend(fontsize=6, ncol=2)
    for ax in (ax0, ax1):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or run.info.run_name)
    return _save(client, run_id, fig, "learning_curves")


def iid_vs_ood(client, run_id: str, runs: list, metric: str, label_of) -> str | None:
    """Scatter of each child's final IID against its OOD test ``metric`` (e.g. ``box_micro``)."""
    pts = [(label_of(r), r.data.metrics.get(f"test_iid/{metric}"), r.data.metrics.get(f"test_ood/{metric}"))
           for r in runs]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    groups: dict[str, list] = {}
    for lab, x, y in pts:
        groups.setdefault(lab, []).append((x, y))
    for lab, xy in groups.items():
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=lab, s=30)
    lo = min(min(p[1], p[2]) for p in pts)
    hi = max(max(p[1], p[2]) for p in pts)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="IID = OOD")
    ax.set(xlabel=f"IID test {metric}", ylabel=f"OOD test {metric}", title="IID vs OOD test")
    ax.legend(fontsize=7)
    return _save(client, run_id, fig, "iid_vs_ood")


def study_figures(client, run_id: str, study) -> list[str]:
    """Optuna's own plots of the sweep's study (matplotlib backend)."""
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    paths = []
    plots = [("optimization_history", ovm.plot_optimization_history, 1),
             ("param_importances", ovm.plot_param_importances, 2),
             ("parallel_coordinate", ovm.plot_parallel_coordinate, 1)]
    for name, plot, need in plots:
        if len(done) < need:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. importances of a constant space
            log.info("figure %s skipped: %s", name, e)
            continue
        fig = (ax if hasattr(ax, "savefig") else (ax.flat[0] if hasattr(ax, "flat") else ax).figure)
        fig.set_size_inches(9, 5)
        paths.append(_save(client, run_id, fig, name))
    return paths


def inference_grid(client, run_id: str, grid: dict) -> list[str]:
    """Table and figure of a trial's validation metrics over its inference-only knobs' grid.

    ``grid`` (from :func:`orchestration.worker.final_eval.evaluate_selected`): ``rows`` (knob values and
    metrics per grid point), ``trained`` (the trial's own knob values), ``metric`` (the sweep's),
    ``selected`` (its val value at the trained knobs), ``split``. Safe to repeat (a resent record):
    an existing table is kept, the figure is overwritten. The figure is rendered first and a
    rendering error only skips it; an upload error propagates (the sender retries the record)."""
    rows, trained, metric = grid["rows"], dict(grid.get("trained") or {}), grid["metric"]
    if not rows:
        return []
    knobs = [k for k in trained if k in rows[0]] or [next(iter(rows[0]))]
    name = "_".join(knobs)
    table = f"inference_grid/{name}.json"
    paths = [table]
    if table not in {a.path for a in client.list_artifacts(run_id, "inference_grid")}:
        client.log_table(run_id, data={k: [r[k] for r in rows] for k in rows[0]}, artifact_file=table)
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, f"{name}.png")
        try:
            _grid_figure(rows, knobs, trained, metric, grid.get("selected"), grid.get("split", "val"), png)
        except Exception as e:  # noqa: BLE001 - a figure never fails a sweep
            log.warning("figure inference_grid/%s.png not rendered: %s", name, e)
            return paths
        client.log_artifact(run_id, png, "inference_grid")
    return [*paths, f"inference_grid/{name}.png"]


def _grid_figure(rows, knobs, trained, metric, selected, split, path) -> None:
    x, rest = knobs[0], knobs[1:]
    cols = [c for c in rows[0] if c == metric or (c.startswith(f"{metric}_") and c not in knobs)]
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list] = {}
    for r in rows:  # one line per value of the other knobs (none for one knob)
        groups.setdefault(tuple(r[k] for k in rest), []).append(r)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r[x])
        suffix = "".join(f", {k}={v:g}" for k, v in zip(rest, key))
        for c in cols:
            ax.plot([r[x] for r in rs], [r[c] for r in rs], "-" if c == metric else ":", marker="o",
                    markersize=3, lw=2 if c == metric else 1, label=f"{split}/{c}{suffix}")
    if x in trained:
        ax.axvline(float(trained[x]), color="grey", ls="--", lw=0.8, label=f"trained {x}={float(trained[x]):g}")
        if selected is not None:
            ax.plot([float(trained[x])], [float(selected)], "*", color="black", markersize=10,
                    label=f"{split}/{metric} at the trained {x}")
    ax.set(xlabel=x, ylabel=f"{split} metric", title=f"{split}/{metric} of the selected checkpoint over {x}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
