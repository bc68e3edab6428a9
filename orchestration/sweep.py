"""``python -m orchestration.sweep method=causal [key=value ...]`` — see ``--help``."""

from __future__ import annotations

import sys

from .config import ConfigError, fail, help_text, parse


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        method = next((a.split("=", 1)[1] for a in argv if a.startswith("method=")), None)
        try:
            print(help_text(method))
        except KeyError as e:
            fail(str(e).strip("'\""))
        return 0
    try:
        cfg = parse(argv)
    except ConfigError as e:
        fail(str(e))
    from .runner import run_sweep  # Ray, MLflow and Optuna load only after validation

    return run_sweep(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
