"""The sweep's Optuna study, persisted: an Optuna journal file under the sweep's experiment path
(``<storage_path>/<sweep>/optuna.journal``) or, with ``search.storage=<RDB URL>`` (e.g. the
cluster's MLflow database host), an RDB study named after the sweep.

Tune pickles the searcher (and with it the study's storage handle) in its experiment state, so a
resumed sweep asks and tells the same study: trials, their numbers and the sampler's history
carry over. A finished sweep extended with ``resume=<name> trials=<N>`` (:mod:`orchestration.search.extend`)
loads the same study in a continuation Tune run. The figures of the parent run are drawn from the
stored study.
"""

from __future__ import annotations

import os

import optuna
from optuna.storages.journal import JournalFileBackend

from grounding.data import storage as data_storage

JOURNAL = "optuna.journal"


def journal_path(exp_path: str) -> str | None:
    """The journal file of a sweep whose experiment path is local (None for object stores)."""
    if data_storage.is_remote(exp_path):
        return None
    return os.path.join(exp_path, JOURNAL)


def storage_for(exp_path: str, url: str = ""):
    """The study's storage: ``url`` (an RDB URL), else a journal file under a local ``exp_path``,
    else None (in memory: a sweep on an object store without an RDB keeps its study in Tune's
    searcher state only)."""
    if url:
        return optuna.storages.RDBStorage(url)
    path = journal_path(exp_path)
    if path is None:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(path))


def load(name: str, storage):
    if storage is None:
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no trial was ever asked
        return None
