"""One credential scrubber for every entry point (``python -m grounding.data`` and the sweep).

:func:`scrub` removes, from any text about to be printed, logged or recorded:

* the ``user:password@`` (or ``token@``) part of any URL (``https://u:p@host`` -> ``https://***@host``);
* the values of the credential environment variables in :data:`SECRET_ENV` (AWS keys and tokens,
  MLflow's username/password/token variables);
* the keys of the AWS shared credentials and config files (``~/.aws/credentials``,
  ``~/.aws/config`` or ``AWS_SHARED_CREDENTIALS_FILE``/``AWS_CONFIG_FILE``), every profile's.

:func:`scrub_tree` applies it to every string of a nested dict/list (params, tags, state files).
Pure standard library: no ray, no mlflow, no network.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_PROFILE_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token")
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s'\"]+@")
MASK = "***"
_MIN_LEN = 4  # shorter values would blank unrelated text


def _profile_secrets() -> list[str]:
    """Every credential value in the AWS shared files (all profiles); missing files are fine."""
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
             os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"]
    out = []
    for f in files:
        path = Path(f).expanduser()
        try:
            if not path.is_file():
                continue
            parser = configparser.RawConfigParser()
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in parser.sections():
            for key in _PROFILE_KEYS:
                value = parser.get(section, key, fallback=None)
                if value:
                    out.append(value.strip())
    return out


def secret_values() -> list[str]:
    """The credential values known to this process (environment and AWS profiles), longest first."""
    values = [os.environ.get(v, "") for v in SECRET_ENV] + _profile_secrets()
    return sorted({v for v in values if v and len(v) >= _MIN_LEN}, key=len, reverse=True)


def _scrub_with(text: str, values: list[str]) -> str:
    text = _USERINFO.sub(r"\1" + MASK + "@", text)
    for value in values:
        text = text.replace(value, MASK)
    return text


def scrub(text: Any, extra: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` as a string with every known credential replaced by ``***``."""
    return _scrub_with(str(text), [*secret_values(), *(e for e in extra if e and len(e) >= _MIN_LEN)])


class ScrubbedStream:
    """A text stream (``sys.stdout``) that scrubs what is written to it; the credential values are
    read once, when it is made. Everything else is the wrapped stream's."""

    def __init__(self, stream, extra: tuple[str, ...] | list[str] = ()):
        self._stream = stream
        self._values = sorted({*secret_values(), *(e for e in extra if e and len(e) >= _MIN_LEN)},
                              key=len, reverse=True)

    def write(self, text: str) -> int:
        self._stream.write(_scrub_with(text, self._values))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def scrub_output() -> None:
    """Scrub everything this process writes through ``sys.stdout``/``sys.stderr`` (its own
    lines, library prints, the worker logs Ray forwards to the driver)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, ScrubbedStream):
            setattr(sys, name, ScrubbedStream(stream))


def scrub_tree(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, strings) with :func:`scrub` applied to every string."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_tree(v) for v in obj)
    return obj


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user:password@, user, password)`` of a URL (``None`` where absent)."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/@\s]+)@(.*)$", url)
    if not m:
        return url, None, None
    user, _, password = m.group(2).partition(":")

    return m.group(1) + m.group(3), unquote(user), (unquote(password) if password else None)
