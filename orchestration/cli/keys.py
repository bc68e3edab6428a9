"""What every command line shares: typed, documented ``key=value`` keys (Hydra's override
grammar), the one-line :class:`ConfigError`, ``--help`` lines and the entry-point wrapper :func:`cli`.

Parsing never imports Ray, MLflow, Optuna or torch: a bad argument or ``--help`` answers at once.

- :class:`Key`, :func:`at_least`, :func:`positive`, :func:`one_of`, :func:`name_problem`: a key and its checks
- :func:`parse_overrides`, :func:`coerce`, :func:`field_type`: ``key=value`` to typed values
- :func:`absolute_uri`: local paths and SQLite URIs made absolute (trials run elsewhere)
- :func:`key_lines`: ``--help`` lines; :func:`fail`: one line on stderr, exit 2; :func:`cli`: the entry wrapper
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException

from grounding.credentials import scrub


class ConfigError(ValueError):
    """A bad command line; the message is one line (control characters of a value, a newline
    included, are shown escaped)."""

    def __init__(self, message: str = ""):
        text = str(message)
        if any(c < " " or c == "\x7f" for c in text):
            text = "".join(c if c >= " " and c != "\x7f" else repr(c)[1:-1] for c in text)
        super().__init__(text)


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns the allowed range on failure
    env: str | None = None  # environment variable that supplies the default


def at_least(lo):
    return lambda v: None if v >= lo else f">= {lo}"


def positive(v):
    return None if v > 0 else "> 0"


NAME_MAX = 100
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
NAME_ALLOWED = f"letters, digits, '.', '_', '-' (no leading '.', at most {NAME_MAX} characters)"


def name_problem(v: str) -> str | None:
    """A value that becomes a path segment (a folder, a run or study name): ``None`` if it is a
    plain name, else what is allowed."""
    if _PLAIN_NAME.fullmatch(v) and len(v) <= NAME_MAX:
        return None
    return NAME_ALLOWED



def one_of(*values):
    return lambda v: None if v in values else ", ".join(map(str, values))



def coerce(name: str, typ: type, value: Any) -> Any:
    """Hydra parses values by their look; convert them to the key's declared type."""
    if typ is str:
        if isinstance(value, (list, dict)):
            raise ConfigError(f"{name}={value!r} has the wrong type; expected a string")
        return "" if value is None else str(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} has the wrong type; expected true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} has the wrong type; expected an integer")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}={value!r} has the wrong type; expected a number")
    raise ConfigError(f"{name}: unsupported type {typ}")


def field_type(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type), str)
    return t



def sweep_syntax_error(arg: str, method: str) -> ConfigError:
    """Hydra multirun syntax (``key=a,b``, ``key=range(...)``) is not a sweep of this CLI."""
    key = arg.split("=", 1)[0]
    return ConfigError(
        f"'{arg}' is Hydra sweep syntax, which this command does not take; give one value ({key}=VALUE), "
        f"let the sweep search it (ranges in search_spaces/{method}.py), or run fixed configurations "
        f"side by side with python -m orchestration.compare")


def parse_overrides(argv: list[str], allow_sweep: bool = False, method: str = "<method>") -> list[tuple[str, Any]]:
    """``key=value`` pairs, values typed by their look (Hydra's grammar). Hydra sweep syntax
    (``a,b``, ``range()``, ``choice()``, ``interval()``, ``glob()``) is refused unless
    ``allow_sweep``, where a choice or range becomes the list of its values. ``method`` names the
    search space a refused sweep syntax points to."""
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"'{arg}' is not an override; write key=value (see --help)")
        try:
            (ov,) = parser.parse_overrides([arg])
        except HydraException as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"cannot parse '{arg}': {first}") from None
        if ov.type != OverrideType.CHANGE or ov.package is not None:
            raise ConfigError(f"'{arg}': only plain key=value overrides are supported")
        if ov.is_sweep_override():
            if not allow_sweep or not (ov.is_choice_sweep() or ov.is_range_sweep()):
                raise sweep_syntax_error(arg, method)
            out.append((ov.key_or_group, list(ov.sweep_iterator())))
            continue
        out.append((ov.key_or_group, ov.value()))
    return out



def absolute_uri(uri: str) -> str:
    """Absolute paths for local SQLite/file URIs: trials run in other working directories."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    return uri


def tracking_uri(value: str) -> str:
    """The MLflow store every command records in: ``mlflow.tracking_uri=`` (absolute), or
    ``./mlflow.db`` (SQLite) of the working folder."""
    return absolute_uri(value or f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def key_lines(keys, extra: dict[str, str] | None = None) -> list[str]:
    """``--help`` lines for ``keys``: name, default, help and environment variable, aligned; then
    ``extra`` (name: help) without a default."""
    def shown(d):
        if isinstance(d, str):
            return repr(d)
        if isinstance(d, bool):
            return str(d).lower()
        return ",".join(map(str, d)) if isinstance(d, list) else str(d)

    width = max(len(k.name) for k in keys) + 2
    lines = [f"  {k.name:<{width}} {shown(k.default):<18} {k.help}" + (f" [env {k.env}]" if k.env else "")
             for k in keys]
    return lines + [f"  {name:<{width}} {'':<18} {text}" for name, text in (extra or {}).items()]


def fail(message: str) -> None:
    """Bad input: one line on stderr (credentials scrubbed), exit code 2."""
    print(f"error: {scrub(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def cli(argv: list[str] | None, help_text: Callable[[list[str]], str], parse: Callable[[list[str]], Any],
        run: Callable[[Any], int]) -> int:
    """What every entry point does: ``-h``/``--help`` prints ``help_text(argv)``; otherwise the
    arguments are validated by ``parse`` (a :class:`ConfigError` is one line and exit 2, before
    anything starts) and ``run`` gets the result (it imports Ray, MLflow and Optuna only then)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in ("-h", "--help") for a in argv):
            print(help_text(argv))
            return 0
        parsed = parse(argv)
    except ConfigError as e:
        fail(str(e))
    return run(parsed)
