"""``python -m orchestration.sweep method=causal [key=value ...]`` — see ``--help``."""

from __future__ import annotations

from .cli.keys import ConfigError, cli
from .cli.sweep_args import help_text, parse


def _help(argv: list[str]) -> str:
    method = next((a.split("=", 1)[1] for a in argv if a.startswith("method=")), None)
    try:
        return help_text(method)
    except KeyError as e:
        raise ConfigError(str(e).strip("'\"")) from None


def _run(cfg) -> int:
    from .sweep_run import run_sweep  # lazy on purpose: Ray, MLflow and Optuna load only after validation

    return run_sweep(cfg)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, _help, parse, _run)


if __name__ == "__main__":
    raise SystemExit(main())
