"""First use under concurrency: one process generates a dataset, the others wait and reuse it.

``exclusive(target)`` holds ``fcntl.flock`` on ``.<name>.lock`` beside ``target`` (stdlib only);
a process that finds the lock taken says so once on stderr and waits. Reentrant in a process.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

_held: dict[str, int] = {}
_mutex = threading.Lock()


def lock_path(target: str | os.PathLike) -> Path:
    t = Path(target).expanduser().absolute()
    return t.parent / f".{t.name}.lock"


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str = "") -> Iterator[None]:
    path = lock_path(target)
    key = str(path)
    with _mutex:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _mutex:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process {what or 'writing'} {target} (lock {path}) ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        with _mutex:
            _held[key] = 1
        try:
            yield
        finally:
            with _mutex:
                _held.pop(key, None)
            fcntl.flock(f, fcntl.LOCK_UN)


def locked_root(fn: Callable) -> Callable:
    """Decorator: ``fn(root, ...)`` runs holding :func:`exclusive` on its local ``root``."""
    @functools.wraps(fn)
    def wrapper(root, *args, **kwargs):
        if "://" in str(root):  # a URL (file:// included) is not a local folder to lock
            return fn(root, *args, **kwargs)
        with exclusive(root, "rewriting"):
            return fn(root, *args, **kwargs)
    return wrapper


def remove_partials(target: str | os.PathLike) -> None:
    """Staging folders of killed writes of ``target`` (``.<name>.partial-*``): call holding the lock."""
    t = Path(target).expanduser().absolute()
    for p in t.parent.glob(f".{t.name}.partial-*"):
        shutil.rmtree(p, ignore_errors=True)
