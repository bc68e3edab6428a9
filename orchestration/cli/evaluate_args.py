"""``python -m orchestration.evaluate``'s command line: ``run=``, ``splits=``, ``log=`` and the
sweep's data and MLflow keys; parsing and ``--help`` only (no Ray, MLflow or torch)."""

from __future__ import annotations

import os
from typing import Any

from hydra.core.override_parser.types import ChoiceSweep

from . import sweep_args as sweep_config
from .keys import ConfigError, Key, coerce, name_problem, parse_overrides, tracking_uri

SHARED = ("data.root", "data.cache_dir", "data.cache_max_gb", "mlflow.tracking_uri", "mlflow.experiment",
          "eval_batch_size")
OWN = (
    Key("run", str, "", "MLflow run id of a trial with a logged model, or of a sweep (its best trial); required"),
    Key("splits", str, "", "comma-separated splits to evaluate (default: every evaluation split present)"),
    Key("log", bool, True, "record the evaluation as a new MLflow run"),
    Key("members", str, "", "comma-separated stages of an ensemble predictor to keep (e.g. causal's spatial,temporal; "
        "the rest left out of its combination; default: all)"),
)
EVAL_SPLITS = ("val", "test_iid", "test_ood", "test")
DESCRIPTION = ("Evaluates the predictor a trial delivered (model/selected.pt + model/config.json) on any "
               "compatible dataset: every evaluation split it has (val, test_iid, test_ood, test) or those "
               "in splits=. run= may be a trial's run or a sweep's parent (its best trial is used).")


def parse(argv: list[str]) -> dict[str, Any]:
    values = {k.name: k.default for k in OWN}
    values["model"] = {}  # model.<name>=value: prediction-time options of the trained model
    for k in SHARED:
        spec = sweep_config.KEY_INDEX[k]
        env = os.environ.get(spec.env) if spec.env else None
        values[k] = coerce(k, spec.type, env) if env else spec.default
    seen = set()
    for key, raw in parse_overrides(argv, allow_sweep=True):  # splits=a,b and members=a,b are lists
        if key in seen:
            raise ConfigError(f"{key} is given twice")
        seen.add(key)
        if key.startswith("model."):
            name = key[len("model."):]
            if not name.isidentifier() or isinstance(raw, (list, dict)):
                raise ConfigError(f"{key}: give one value for one option name (model.<name>=value)")
            values["model"][name] = raw
            continue
        spec = {k.name: k for k in OWN}.get(key) or (sweep_config.KEY_INDEX[key] if key in SHARED else None)
        if spec is None:
            raise ConfigError(f"unknown key '{key}'; allowed: {', '.join([*(k.name for k in OWN), *SHARED])}, "
                              f"model.<name>")
        if isinstance(raw, list) and key not in ("splits", "members"):
            raise ConfigError(f"{key}={','.join(map(str, raw))}: {key} takes one value; allowed: a list only for "
                              f"splits= and members=")
        if key in ("splits", "members") and not isinstance(raw, str):
            if isinstance(raw, (ChoiceSweep, list, tuple)):
                raw = ",".join(map(str, raw.list if isinstance(raw, ChoiceSweep) else raw))
            elif isinstance(raw, dict):
                raise ConfigError(f"{key}={raw!r} has the wrong type; expected comma-separated names")
            else:
                raw = "" if raw is None else str(raw)
        values[key] = coerce(key, spec.type, raw)
        if spec.check and (allowed := spec.check(values[key])) is not None:
            raise ConfigError(f"{key}={values[key]!r} is out of range; allowed: {allowed}")
    if not values["run"]:
        raise ConfigError("run= is required; allowed: the MLflow run id of a trial with a logged model or of a sweep")
    if (allowed := name_problem(values["run"])) is not None:
        raise ConfigError(f"run={values['run'][:120]!r} is not a plain name; allowed: an MLflow run id ({allowed})")
    values["mlflow.tracking_uri"] = tracking_uri(values["mlflow.tracking_uri"])
    return values


def help_text() -> str:
    width = 22
    lines = ["usage: python -m orchestration.evaluate run=<MLflow run id> [data.root=<dataset>] [key=value ...]",
             "", DESCRIPTION, "", "keys (default):"]
    for k in [*OWN, *(sweep_config.KEY_INDEX[n] for n in SHARED)]:
        d = repr(k.default) if isinstance(k.default, str) else str(k.default).lower() if isinstance(k.default, bool) else k.default
        help_ = "dataset to evaluate on (default: the one the model was trained on)" if k.name == "data.root" else k.help
        lines.append(f"  {k.name:<{width}} {d!s:<18} {help_}")
    lines.append(f"  {'model.<name>':<{width}} {'':<18} an option the method reads only at prediction time, on the "
                 f"trained weights (the method's prediction_options, e.g. scl's inference, cpl's vote_weight)")
    lines += ["", "examples:", "  python -m orchestration.evaluate run=98fdc845c9564b36b58c53de5caefda5",
              "  python -m orchestration.evaluate run=<sweep parent id> data.root=s3://lab-features/yc2bb/v1",
              "  python -m orchestration.evaluate run=<scl trial> model.inference=context"]
    return "\n".join(lines)


