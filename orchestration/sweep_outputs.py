"""What a finished sweep leaves in MLflow besides its runs: the best trial's selected model, the
study's figures and the IID-vs-OOD scatter on the parent, a description that links them."""

from __future__ import annotations

from . import figures, lineage, study as study_mod, tracking
from .trial import split_params


def record(client, exp_id: str, parent: str, results, logger, ds, run: dict, metric: str, task,
           name: str, study_storage) -> list[str]:
    """Log the outputs; returns the parent's artifact paths. Never raises: a sweep whose figures
    fail still finishes (the reason is printed)."""
    artifacts: list[str] = []
    try:
        best = None
        for r in results:
            v = (r.metrics or {}).get(metric)
            if not r.error and v is not None and (best is None or v > best.metrics[metric]):
                best = r
        if best is not None:
            tid = best.metrics.get("trial_id")
            run_id = logger.run_ids().get(tid) or logger.sender._find_child(tid)
            ckpt = lineage.best_checkpoint(best, metric)
            if run_id and ckpt is not None:
                model, optim = split_params(dict(best.config), run)
                cfg = lineage.resolved_config(run["method"], run["task"], {**model, **vars(optim)},
                                              lineage.data_info(ds), None, metric)
                uri = lineage.log_model(client, run_id, ckpt, cfg)
                client.set_tag(parent, "best_model_uri", uri)
    except Exception as e:
        print(f"[sweep] best model not logged: {e}", flush=True)
    try:
        st = study_mod.load(name, study_storage)
        if st is not None:
            artifacts += figures.study_figures(client, parent, st)
        runs = tracking.children(client, exp_id, parent)
        fig = figures.iid_vs_ood(client, parent, runs, task.default_metric,
                                 lambda r: r.data.tags.get("method", "trial"))
        artifacts += [fig] if fig else []
    except Exception as e:
        print(f"[sweep] figures not logged: {e}", flush=True)
    return artifacts
