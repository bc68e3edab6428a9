"""Extending a finished sweep with more trials: ``resume=<name> trials=<N>``.

Tune cannot raise ``num_samples`` of a restored experiment, so the extra trials run as a
continuation Tune run in ``<experiment path>/ext-<k>`` whose OptunaSearch loads the sweep's
persisted study (orchestration/search/study.py): TPE sees every earlier trial, the PAPER/named points are
not enqueued again, Optuna numbers the new trials after the old ones, and the sampler (with its
random state) is the one the previous Tune run pickled in its searcher state. The children are
logged under the same MLflow parent, numbered after the earlier ones; the parent's summary and
figures cover all trials.

The sweep's state file (``sweep.json``) records whether each Tune run finished (``finished``) and
the extensions (``extensions: [{folder, trials, finished}]``); ``resume=<name>`` without
``trials=`` continues the latest of them; an extension that stopped before Tune saved its first
state is started again (:func:`unsaved`).
"""

from __future__ import annotations

import glob
import os
import pickle
from dataclasses import dataclass

from ray.tune import ExperimentAnalysis, ResultGrid

from grounding.data import storage

from ..cli.keys import fail
from . import study as study_mod


@dataclass
class Extension:
    index: int  # 1 for the first extension
    folder: str  # the Tune experiment name under the sweep's experiment path
    trials: int  # trials this extension runs
    before: int  # trials the sweep had before it


def asked_trials(argv: list[str]) -> int | None:
    """The ``trials=`` given with ``resume=`` (already validated by the parser), else None."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("trials=")]
    return int(given[-1]) if given else None


def planned(state: dict, saved_trials: int) -> int:
    """All trials the sweep has been asked for: its own plus every extension's."""
    return saved_trials + sum(e["trials"] for e in state.get("extensions", []))


def latest(state: dict, exp_path: str) -> tuple[str, bool]:
    """The Tune experiment folder ``resume=`` continues and whether that Tune run finished."""
    exts = state.get("extensions", [])
    if exts:
        return storage.join(exp_path, exts[-1]["folder"]), bool(exts[-1].get("finished"))
    return exp_path, bool(state.get("finished"))


def plan(state: dict, saved_trials: int, asked: int | None, exp_path: str, name: str,
         rdb_url: str) -> Extension | None:
    """The extension ``trials=`` asks for (None without it); bad requests fail (exit 2) before Ray."""
    if asked is None:
        return None
    have = planned(state, saved_trials)
    _, finished = latest(state, exp_path)
    if not finished:
        fail(f"resume={name} trials={asked}: the sweep has not finished its {have} trials; allowed: "
             f"resume={name} without trials= first, then trials=<more than {have}> to extend it")
    if asked <= have:
        fail(f"trials={asked} is out of range for resume={name}, which already ran {have} trials; allowed: "
             f"more than {have} (the extra trials extend the sweep)")
    if not rdb_url and study_mod.journal_path(exp_path) is None:
        fail(f"resume={name} trials={asked}: the sweep's Optuna study is not persisted (experiment path on an "
             f"object store without search.storage=); allowed: extend sweeps with a local storage_path or an RDB study")
    index = len(state.get("extensions", [])) + 1
    return Extension(index=index, folder=f"ext-{index}", trials=asked - have, before=have)


def unsaved(state: dict, total: int) -> Extension | None:
    """The latest extension when its Tune run stopped before Tune saved any state (the driver was
    killed between recording it and Tune's first experiment checkpoint): it is removed from
    ``state`` and returned, to be started again with the same trials; None when the latest Tune
    run is not an extension. ``total`` is every trial the sweep has been asked for."""
    exts = state.get("extensions", [])
    if not exts or exts[-1].get("finished"):
        return None
    last = exts.pop()
    return Extension(index=len(exts) + 1, folder=last["folder"], trials=last["trials"], before=total - last["trials"])


def record(exp_path: str, state: dict, write, *, extension: Extension | None = None,
           finished: bool | None = None) -> None:
    """Add ``extension`` to the state file, or mark its latest Tune run ``finished``."""
    if extension is not None:
        state.setdefault("extensions", []).append(
            {"folder": extension.folder, "trials": extension.trials, "finished": False})
    if finished is not None:
        (state["extensions"][-1] if state.get("extensions") else state)["finished"] = finished
    write(exp_path, state)


def previous_sampler(folder: str):
    """The Optuna sampler the Tune run in ``folder`` pickled with its searcher (its random state
    included), or None where there is none to read (an object store: the extension then seeds a
    fresh sampler with ``search.seed + k``)."""
    if storage.is_remote(folder):
        return None
    paths = glob.glob(os.path.join(folder, "searcher-state-*.pkl"))
    if not paths:
        return None
    try:
        with open(max(paths, key=os.path.getmtime), "rb") as f:
            saved = pickle.load(f)
    except Exception:  # noqa: BLE001 - an unreadable state: a fresh sampler, differently seeded
        return None
    return saved.get("_sampler") if isinstance(saved, dict) else None


def earlier_results(state: dict, exp_path: str, metric: str) -> list:
    """The results of the sweep's earlier Tune runs (the best model is chosen over all trials)."""
    folders = [exp_path] + [storage.join(exp_path, e["folder"]) for e in state.get("extensions", [])[:-1]]
    out = []
    for folder in folders:
        try:
            out += list(ResultGrid(ExperimentAnalysis(folder, default_metric=metric, default_mode="max")))
        except Exception as e:  # noqa: BLE001 - the best model then comes from the newer trials
            print(f"[sweep] results of {folder} not read: {type(e).__name__}", flush=True)
    return out
