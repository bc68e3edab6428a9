"""A short console progress display: one line when a trial starts, ends or fails.

Used instead of Ray Tune's periodic status tables (which print every trial's full config and
checkpoint path) unless ``verbose=`` asks for those. Each end line says the trial's result, how
many trials are done, the best value so far and the elapsed time.
"""

from __future__ import annotations

import time
from typing import Callable

from ray.tune import Callback


class ProgressLines(Callback):
    def __init__(self, metric: str, total: int, label: Callable | None = None, prefix: str = "[sweep]"):
        self.metric, self.total, self.prefix = metric, total, prefix
        self.label = label
        self.t0 = time.time()
        self.started: dict[str, float] = {}
        self.last: dict[str, dict] = {}
        self.done = 0
        self.failed = 0
        self.best: float | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; labels may be lambdas
        state = dict(self.__dict__)
        state["label"] = None
        return state

    def _name(self, trial) -> str:
        if self.label is not None:
            try:
                return str(self.label(trial))
            except Exception:  # a label that does not fit this trial's config
                pass
        return trial.trial_id

    def _print(self, msg: str) -> None:
        print(f"{self.prefix} {msg}", flush=True)

    def _elapsed(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self._print(f"start {self._name(trial)} ({len(self.started)}/{self.total} started, {self._elapsed()} elapsed)")

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())
        self._print(f"resume {self._name(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        result = self.last.get(trial.trial_id) or getattr(trial, "last_result", {}) or {}
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            self.best = value if self.best is None else max(self.best, value)
        took = time.time() - self.started.get(trial.trial_id, time.time())
        epochs = result.get("epoch", result.get("training_iteration", "?"))
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        self._print(f"done  {self._name(trial)}: {self.metric} {shown} after {epochs} epochs in {took:.0f}s "
                    f"({self.done + self.failed}/{self.total} ended, best {best}, {self._elapsed()} elapsed)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        err = getattr(trial, "error_file", None) or "see the Ray logs"
        self._print(f"FAILED {self._name(trial)} ({self.done + self.failed}/{self.total} ended): {err}")


def quiet_workers() -> None:
    """Ray ``worker_process_setup_hook``: trial processes log warnings and errors only (not one
    "Checkpoint successfully created at: …" line per epoch and trial)."""
    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def console(verbose: int) -> dict:
    """Ray Tune's console output for ``verbose``: 0 = only :class:`ProgressLines` (the legacy
    reporter at verbosity 0 prints nothing, where the new one prints a header box and hints);
    1-3 = Tune's own status tables. Returns the ``ray.init`` keyword arguments to match."""
    import os

    if verbose == 0:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        return {"runtime_env": {"worker_process_setup_hook": "orchestration.progress.quiet_workers"}}
    return {}


class _DropNotice:
    """Drops Ray's "token authentication is enabled (by default)" notice."""

    def filter(self, record) -> bool:
        return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def start_ray(address: str | None, verbose: int) -> None:
    """``ray.init`` as both entry points call it: Ray's own warnings only, the console of
    :func:`console`. Ray's notice that a new local cluster uses token authentication (its default,
    kept) is dropped: a user of the sweep cannot act on it."""
    import logging

    import ray

    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DropNotice())
    ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING",
             **console(verbose))
