"""What a finished sweep leaves in MLflow besides its runs: the best trial's selected model, the
study's figures and the IID-vs-OOD scatter on the parent, a description that links them."""

from __future__ import annotations

from grounding import tasks

from .search import study as study_mod
from .tracking import figures, lineage, runs
from .worker.spec import TrialSpec
from .worker.trial import split_params


def record(driver, results, ds, spec: TrialSpec, metric: str, study_storage) -> list[str]:
    """Log the outputs of the sweep ``driver`` runs (:class:`~orchestration.driver.Driver`: its
    client, parent and trial logger); returns the parent's artifact paths. Never raises: a sweep
    whose figures fail still finishes (the reason is printed)."""
    client, exp_id, parent, logger = driver.client, driver.exp_id, driver.parent, driver.logger
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
                model, optim = split_params(dict(best.config), spec)
                cfg = lineage.resolved_config(spec.method, spec.task, {**model, **vars(optim)},
                                              lineage.data_info(ds), None, metric)
                uri = lineage.log_model(client, run_id, ckpt, cfg)
                client.set_tag(parent, "best_model_uri", uri)
    except Exception as e:  # noqa: BLE001 - a sweep whose model logging fails still finishes
        print(f"[sweep] best model not logged: {e}", flush=True)
    try:
        st = study_mod.load(spec.sweep, study_storage)
        if st is not None:
            artifacts += figures.study_figures(client, parent, st)
        fig = figures.iid_vs_ood(client, parent, runs.children(client, exp_id, parent),
                                 tasks.get(spec.task).default_metric,
                                 lambda r: r.data.tags.get("method", "trial"))
        artifacts += [fig] if fig else []
    except Exception as e:  # noqa: BLE001 - figures never fail a sweep
        print(f"[sweep] figures not logged: {e}", flush=True)
    return artifacts
