"""The sweep's command line: Hydra-style ``key=value`` overrides on typed, documented defaults.

Everything is validated before Ray starts; a bad override is one line on stderr naming what is
wrong and what is allowed, and exit code 2.

- :data:`KEYS`: every key of ``python -m orchestration.sweep``; :class:`SweepConfig`: the parsed values
- :func:`parse`: overrides -> :class:`SweepConfig`, checked against the method's hyperparameters
- :func:`help_text`, :func:`metric_help`: ``--help``; :func:`in_effect`: a config error in one line
- :func:`sweep_fixed`, :func:`sweep_paper`: the method's ``FIXED`` and ``PAPER`` points
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import search_spaces
from grounding import tasks
from grounding.data import benchmarks
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry

from .keys import (NAME_ALLOWED, ConfigError, Key, at_least, coerce, field_type, key_lines, name_problem,
                   one_of, parse_overrides, positive)


def _name_or_empty(v: str) -> str | None:
    return None if v == "" else name_problem(v)


def _resume_target(v: str) -> str | None:
    """resume=: a sweep name, or an experiment path (absolute folder or URL) holding sweep.json."""
    if v == "" or (v.startswith("/") or "://" in v) and "\0" not in v:
        return None
    return name_problem(v) and f"a sweep name ({NAME_ALLOWED}) or an absolute experiment path or URL"


KEYS: tuple[Key, ...] = (
    Key("method", str, "causal", "grounding method (registry key)", one_of(*registry.names())),
    Key("name", str, "", "sweep name (default: <method>-<timestamp>); also the Ray experiment folder",
        _name_or_empty),
    Key("trials", int, 8, "number of trials (configurations) to run", at_least(1)),
    Key("epochs", int, 4, "maximum epochs per trial (ASHA stops weak trials earlier)", at_least(1)),
    Key("converge.patience", int, 0, "stop a trial once its validation curve is flat: no gain above "
        "converge.min_delta in val/<search.metric> for this many epochs; an ensemble (staged causal) stops "
        "each component on its own selection score (0: every trial may run all its epochs)",
        at_least(0)),
    Key("converge.min_delta", float, 0.005, "the gain (absolute, in the metric's units) that counts as "
        "progress for converge.patience", at_least(0.0)),
    Key("concurrent", int, 2, "maximum concurrent trials", at_least(1)),
    Key("workers", int, 1, "Ray Train workers per trial (>1 runs a TorchTrainer with DDP)", at_least(1)),
    Key("trainer", str, "auto", "auto: single-worker trials train in the trial's actor; always: every trial "
        "runs a Ray Train TorchTrainer (worker group per trial)", one_of("auto", "always")),
    Key("cpus_per_worker", float, 1.0, "CPUs per worker (fractions allowed); also its torch threads", positive),
    Key("gpus_per_worker", float, 0.0, "GPUs per worker (fractions allowed; > 0 trains on CUDA)", at_least(0.0)),
    Key("amp", bool, True, "automatic mixed precision (autocast + gradient scaling) when training on CUDA; "
        "no effect on CPU"),
    Key("seed", int, 0, "training seed (model init, shuffling)", at_least(0)),
    Key("smoke", bool, False, "tiny sweep: smoke-sized data, 2 trials x 2 epochs, no ASHA"),
    Key("scheduler", str, "asha", "trial scheduler", one_of("asha", "fifo")),
    Key("asha.grace_period", int, 1, "ASHA: epochs before a trial can be stopped", at_least(1)),
    Key("asha.reduction_factor", int, 2, "ASHA: keep the top 1/reduction_factor at each rung", at_least(2)),
    Key("search.algo", str, "tpe", "Optuna sampler: tpe (Bayesian) or random", one_of("tpe", "random")),
    Key("search.seed", int, 0, "seed of the search algorithm", at_least(0)),
    Key("search.metric", str, "", "validation metric to maximise (default: the method's task's: "
                                  "box_micro for WSVOG, r1_iou50 for moments, m_viou for tubes)"),
    Key("search.storage", str, "", "Optuna study storage: an RDB URL (default: a journal file under the "
        "sweep's path; in memory on an object store)"),
    Key("data.root", str, "", "dataset root: local folder or s3://bucket/prefix (default: ./data/<benchmark>)",
        env="GROUNDING_DATA_ROOT"),
    Key("data.generate", bool, False, "generate the benchmark at a given local data.root that holds no dataset "
        "(without it such a root is an error; the default ./data/<benchmark> is always generated on first use)"),
    Key("data.seed", int, 0, "seed of the generated benchmark", at_least(0)),
    Key("data.dim", int, 0, "feature size D of the generated benchmark (0 = the benchmark's default)", at_least(0)),
    Key("data.cache_dir", str, "", "node-local cache of remote shards and mapped splits (default: ~/.cache/grounding)",
        env="GROUNDING_CACHE_DIR"),
    Key("data.cache_max_gb", float, 50.0, "size bound of the shard cache in GB", positive),
    Key("data.mapped", bool, True, "trials map the node's one copy of each split (false: decode the shards "
        "into each trial's memory)"),
    Key("mlflow.tracking_uri", str, "", "MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)",
        env="MLFLOW_TRACKING_URI"),
    Key("mlflow.experiment", str, "video-grounding", "MLflow experiment holding the sweeps"),
    Key("storage_path", str, "", "Ray Tune storage (checkpoints, state): local folder or s3://… "
        "(default: <cwd>/ray_results)", env="GROUNDING_STORAGE_PATH"),
    Key("ray.address", str, "", "Ray cluster to join (default: start a local Ray; 'auto' joins a running one)",
        env="RAY_ADDRESS"),
    Key("checkpoints.keep", int, 2, "checkpoints kept per trial", at_least(1)),
    Key("failures", int, 1, "retries of a failed trial/worker from its last checkpoint", at_least(0)),
    Key("eval_batch_size", int, 128, "evaluation batch size", at_least(1)),
    Key("resume", str, "", "resume an interrupted sweep: its name or its experiment path (only "
        "mlflow.tracking_uri, ray.address, data.cache_dir may be given with it); with trials=N (more "
        "than it ran) a finished sweep is extended on the same Optuna study and MLflow parent", _resume_target),
    Key("verbose", int, 0, "0: one line per trial start/end; 1-3: Ray Tune's status tables too", one_of(0, 1, 2, 3)),
    Key("backbone", str, "", "start from an existing backbone stage instead of training one: the stage's MLflow "
        "run id or its folder (…/stages/backbone-<key>); must match the data digest and dims"),
)
KEY_INDEX = {k.name: k for k in KEYS}
NAME_KEYS = ("name", "resume")  # values that become path segments (compare: also from_sweep)
PREFIXES = ("model.", "optim.")


@dataclasses.dataclass
class SweepConfig:
    values: dict[str, Any]
    model: dict[str, Any]  # pinned method hyperparameters (model.<name>=...)
    optim: dict[str, Any]  # pinned optimiser hyperparameters (optim.<name>=...)
    argv: list[str]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def method(self) -> str:
        return self.values["method"]

    @property
    def task(self) -> str:
        return registry.task_of(self.method)

    @property
    def benchmark(self) -> str:
        return benchmarks.DEFAULT_FOR_TASK[self.task]

    def to_flat(self) -> dict[str, Any]:
        out = dict(self.values)
        out.update({f"model.{k}": v for k, v in self.model.items()})
        out.update({f"optim.{k}": v for k, v in self.optim.items()})
        return out


def _method_in(argv: list[str]) -> str:
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("method=")), KEY_INDEX["method"].default)
    return value if value in registry.names() else "<method>"


def parse(argv: list[str]) -> SweepConfig:
    """Validate overrides against the keys, the method's hyperparameters and their ranges."""
    pairs = parse_overrides(argv, method=_method_in(argv))
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ConfigError(f"{key} is given twice")
        seen.add(key)
    values: dict[str, Any] = {}
    for k in KEYS:
        env = os.environ.get(k.env) if k.env else None
        values[k.name] = coerce(k.name, k.type, env) if env else k.default
    prefixed = []
    for key, raw in pairs:
        if key.startswith(PREFIXES):
            prefixed.append((key, raw))
            continue
        if key not in KEY_INDEX:
            raise ConfigError(
                f"unknown key '{key}'; allowed: {', '.join(KEY_INDEX)}, model.<hyperparameter>, "
                f"optim.<{'|'.join(OPTIM_KEYS)}>"
            )
        spec = KEY_INDEX[key]
        value = coerce(key, spec.type, raw)
        if spec.check and (allowed := spec.check(value)) is not None:
            what = ("is unknown" if key == "method" else "is not a plain name" if key in NAME_KEYS
                    else "is out of range")
            shown = value if not isinstance(value, str) or len(value) <= 120 else value[:60] + "…"
            raise ConfigError(f"{key}={shown!r} {what}; allowed: {allowed}")
        values[key] = value

    method = values["method"]
    fields = registry.config_fields(method)
    model: dict[str, Any] = {}
    optim: dict[str, Any] = {}
    optim_fields = {f.name: f for f in dataclasses.fields(OptimConfig)}
    for key, raw in prefixed:
        group, _, name = key.partition(".")
        table = fields if group == "model" else optim_fields
        if name not in table:
            raise ConfigError(f"{method} has no {group} hyperparameter '{name}'; allowed: {', '.join(table)}")
        (model if group == "model" else optim)[name] = coerce(key, field_type(table[name]), raw)
    # validated with the values in effect for the first trial: the published point (PAPER) for
    # the searched values, under the sweep's FIXED values, under the pinned ones
    fixed = sweep_fixed(method)
    first = {**sweep_paper(method), **fixed}
    try:
        registry.make_config(method, {**{k: v for k, v in first.items() if k in fields}, **model})
    except (ValueError, TypeError) as e:
        raise ConfigError(in_effect("model", str(e), method, fixed, model)) from None
    try:
        OptimConfig(**{**{k: v for k, v in first.items() if k in optim_fields}, **optim})
    except (ValueError, TypeError) as e:
        raise ConfigError(in_effect("optim", str(e), method, fixed, optim)) from None
    task = tasks.get(registry.task_of(method))
    if values["search.metric"] and values["search.metric"] not in task.metric_names:
        raise ConfigError(f"search.metric={values['search.metric']!r} is unknown for {task.name}; "
                          f"allowed: {', '.join(task.metric_names)}")
    if values["asha.grace_period"] > values["epochs"] and values["scheduler"] == "asha":
        raise ConfigError(
            f"asha.grace_period={values['asha.grace_period']} is out of range; allowed: <= epochs ({values['epochs']})"
        )
    if values["gpus_per_worker"] > 1 and values["gpus_per_worker"] != int(values["gpus_per_worker"]):
        raise ConfigError(
            f"gpus_per_worker={values['gpus_per_worker']} is out of range; allowed: a fraction below 1 or a whole number"
        )
    if values["smoke"]:
        explicit = {k for k, _ in pairs}
        for k, v in (("trials", 2), ("epochs", 2), ("scheduler", "fifo")):
            if k not in explicit:
                values[k] = v
    return SweepConfig(values=values, model=model, optim=optim, argv=list(argv))


def sweep_fixed(method: str) -> dict[str, Any]:
    """The values ``search_spaces/<method>.py`` holds fixed (``FIXED``), before any pin."""
    return dict(getattr(search_spaces.load(method), "FIXED", {}))


def sweep_paper(method: str) -> dict[str, Any]:
    """The published point ``search_spaces/<method>.py`` evaluates first (``PAPER``)."""
    return dict(getattr(search_spaces.load(method), "PAPER", {}))


def in_effect(group: str, message: str, method: str, fixed: dict[str, Any], pinned: dict[str, Any]) -> str:
    """A config error as one line: ``group.``-prefixed, saying which named values the sweep holds
    fixed (so the message shows the value in effect and where it comes from)."""
    first = re.sub(r"^\w+Config\.", "", message.strip().splitlines()[0])
    named = re.findall(r"\b(\w+)=", first)
    from_fixed = [n for n in dict.fromkeys(named) if n in fixed and n not in pinned]
    note = "".join(f"; {n}={fixed[n]!r} is held fixed by search_spaces/{method}.py (pin {group}.{n}=... to change it)"
                   for n in from_fixed)
    return f"{group}.{first}{note}"


def metric_help(methods: list[str], what: str = "validation metric to maximise") -> str:
    """``search.metric``'s help line naming the default in effect for ``methods``."""
    families = list(dict.fromkeys(registry.task_of(m) for m in methods))
    parts = []
    for fam in families:
        task = tasks.get(fam)
        who = ", ".join(m for m in methods if registry.task_of(m) == fam)
        parts.append(f"{task.default_metric} for {who} ({fam} task)")
    return f"{what} (default: {'; '.join(parts)})"


def help_text(method: str | None = None) -> str:
    lines = [
        "usage: python -m orchestration.sweep [key=value ...]",
        "",
        "Sweep a grounding method's hyperparameters with Ray Tune + Optuna (ASHA), training each",
        "trial with Ray Train and recording the sweep in MLflow (parent run + one child per trial).",
        "",
        "Bad input is one line on stderr and exit code 2, before Ray starts and before anything is",
        "written: an unknown key, a wrong type or range, a value the data cannot take (the first point",
        "is built on the driver with the dataset; searched ranges are clipped to what the data allow),",
        "an MLflow server or object store that does not answer within 10 s or refuses the credentials,",
        "a given data.root without a dataset (unless data.generate=true), Hydra sweep syntax",
        "(key=a,b, key=range(...): the searched ranges are in search_spaces/<method>.py; fixed",
        "configurations side by side: python -m orchestration.compare). SIGINT/SIGTERM stop the",
        "sweep (parent run KILLED, summary so far, exit 130/143); resume=<name> continues it.",
        "",
        "keys (default):",
    ]
    keys = KEYS if method not in registry.names() else [
        dataclasses.replace(k, help=metric_help([method])) if k.name == "search.metric" else k for k in KEYS]
    lines += key_lines(keys, {"model.<name>": "pin a hyperparameter of the method (removed from the search)",
                              "optim.<name>": f"pin an optimiser setting: {', '.join(OPTIM_KEYS)}"})
    lines += [
        "",
        f"methods: {', '.join(registry.names())}",
    ]
    if method:
        mod = search_spaces.load(method)
        fixed = getattr(mod, "FIXED", {})
        lines += ["", f"{method} hyperparameters (config default; search space; sweep-fixed value):"]
        space = mod.space({"T": 5, "N": 20, "L": 64})
        for name, f in registry.config_fields(method).items():
            rng = space.get(name)
            lines.append(f"  model.{name:<16} {f.default!s:<10} {_describe(rng):<36} {fixed.get(name, '')}"
                         + (f"  {f.metadata['help']}" if "help" in f.metadata else ""))
        for name in OPTIM_KEYS:
            rng = space.get(name)
            lines.append(f"  optim.{name:<16} {getattr(OptimConfig(), name)!s:<10} {_describe(rng):<36} {fixed.get(name, '')}")
    lines += [
        "",
        "examples:",
        "  python -m orchestration.sweep method=causal",
        "  python -m orchestration.sweep method=stvg trials=16 epochs=8 concurrent=4",
        "  python -m orchestration.sweep method=causal model.bda=false data.root=s3://bucket/yc2",
        "  python -m orchestration.sweep method=causal workers=2 gpus_per_worker=0.5",
        "  python -m orchestration.sweep resume=causal-20261123-101500",
        "  python -m orchestration.sweep resume=causal-20261123-101500 trials=16   # 8 more trials",
    ]
    return "\n".join(lines)


def _describe(param) -> str:
    if param is None:
        return "-"
    d = {k: v for k, v in dataclasses.asdict(param).items() if k != "when" and v is not False}  # 0.0 is a bound
    when = f" if {param.when}" if param.when else ""
    return f"{type(param).__name__}({', '.join(f'{v}' for v in d.values())}){when}"


