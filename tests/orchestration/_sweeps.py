"""Run real sweeps as a user does: ``python -m orchestration.sweep`` in a fresh folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def names(p: Path) -> list[str]:
    """The entries of folder ``p`` (none when it does not exist)."""
    return sorted(x.name for x in p.iterdir()) if p.exists() else []


def sweep_env(tmp: Path, **extra: str) -> dict:
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "GROUNDING_DATA_ROOT", "GROUNDING_STORAGE_PATH"):
        env.pop(k, None)
    # a loaded 2-core CI box can take longer than Train's default 60 s to start a worker group
    env.update(GROUNDING_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0",
               RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300")
    env.update(extra)
    return env


def run_sweep(cwd: Path, *args: str, timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m orchestration.sweep ARGS`` in ``cwd``; output is kept for the assertion messages."""
    return subprocess.run([sys.executable, "-m", "orchestration.sweep", *args], cwd=cwd,
                          env=env or sweep_env(cwd), capture_output=True, text=True, timeout=timeout)




def study_trials(cwd: Path, name: str) -> list:
    """The trials of sweep ``name``'s persisted Optuna study (its journal under ``cwd/ray_results``)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = cwd / "ray_results" / name / "optuna.journal"
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(journal)))).trials
