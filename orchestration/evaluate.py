"""``python -m orchestration.evaluate run=<MLflow run id> data.root=<dataset>`` — see ``--help``.

Evaluates the predictor a trial delivered (``model/selected.pt`` + ``model/config.json``, see
:mod:`orchestration.tracking.lineage`) on any compatible dataset, e.g. a lab's real features converted to
shards: every evaluation split it has (``val``, ``test_iid``, ``test_ood``, ``test``) or those in
``splits=``. ``run=`` may be a trial's run or a sweep's parent (its best trial is used). The
result is printed and, unless ``log=false``, recorded as a new MLflow run (tag ``kind=evaluation``,
``source_run``) with the dataset as its input, one metric per split and metric, and for WSVOG a
per-class table (``per_class.json``: box and query accuracy of every class on every split).

An incompatible dataset — another task family, another feature size, a class vocabulary or input
shape the model's weights do not fit — is one line on stderr and exit code 2, before anything is
written.
"""

from __future__ import annotations

from .cli.evaluate_args import help_text, parse
from .cli.keys import cli


def _run(values: dict) -> int:
    from .evaluate_run import evaluate  # lazy on purpose: MLflow and torch load only after validation

    return evaluate(values)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, lambda _: help_text(), parse, _run)


if __name__ == "__main__":
    raise SystemExit(main())
