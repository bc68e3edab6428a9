"""Ray's ``worker_process_setup_hook`` (:data:`orchestration.driver.QUIET_HOOK`), imported in every
worker process: kept apart from the trial code so that the hook loads nothing heavy."""

from __future__ import annotations

import logging


def quiet_workers() -> None:
    """Trial processes log warnings and errors only (not one "Checkpoint successfully created at:
    …" line per epoch and trial)."""
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
