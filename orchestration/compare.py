"""``python -m orchestration.compare methods=stvg,causal seeds=3 variants=all`` — see ``--help``."""

from __future__ import annotations

from .cli.compare_args import help_text, parse
from .cli.keys import cli


def _run(ccfg) -> int:
    from .compare_run import run_compare  # lazy on purpose: Ray, MLflow and Optuna load only after validation

    return run_compare(ccfg)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, help_text, parse, _run)


if __name__ == "__main__":
    raise SystemExit(main())
