"""``python -m orchestration.compare methods=stvg,causal seeds=3 variants=all`` — see ``--help``.

A comparison trains fixed configurations, no search: every (method, variant, seed) cell is one
Ray Tune trial running the sweep's own trial function (``orchestration.worker.trial.trial_fn``) on one
dataset, all under one MLflow parent run with one child run per cell. A cell's configuration is,
in order of precedence (later wins):

1. the point: ``point=paper`` (the method's ``PAPER``, default), ``point=defaults`` (config
   defaults) or a name from the method's ``POINTS``; a compared method that does not declare that
   name runs its ``paper`` point (e.g. ``methods=stvg,causal point=code``: causal at the authors'
   code point, stvg at its own ``PAPER``; the parent run's ``points`` param says which); or, for the method of a finished sweep named
   in ``from_sweep=<name>``, that sweep's best configuration (read from its MLflow runs);
2. the method's ``FIXED`` values (the sweep's CPU-sized embedding);
3. the variant's overrides (``search_spaces/<method>.py`` ``VARIANTS``; ``base`` = none);
4. ``model.<name>=`` / ``optim.<name>=`` pins from the command line (for every method that has
   the hyperparameter).

When the trials end, the parent gets, for every (method, variant), split (IID test, OOD test,
val, and the last epoch's IID and OOD test for reference: selection is on val) and metric, the mean, the sample std and the 95% confidence interval (Student's t) over the
seeds, computed from the child runs' final metrics: an MLflow table (``compare_table.json``, one
row per method, variant, split and metric), the markdown tables (``compare.md``, also printed).

Keys shared with the sweep (data, MLflow, Ray, resources) are the sweep's own
(:mod:`orchestration.cli.sweep_args`), parsed and validated by the same code; everything is checked
before Ray starts (one line on stderr, exit code 2).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import ChoiceSweep

import search_spaces
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry

from . import sweep_args as sweep_config
from .keys import tracking_uri as default_tracking_uri
from .keys import ConfigError, Key, coerce, field_type, key_lines, name_problem, parse_overrides
from .sweep_args import SweepConfig

# keys of the sweep that mean the same here
SHARED = ("name", "epochs", "converge.patience", "converge.min_delta", "concurrent", "workers", "trainer", "cpus_per_worker", "gpus_per_worker",
          "amp", "smoke", "search.metric", "data.root", "data.generate", "data.seed", "data.dim", "data.cache_dir",
          "data.cache_max_gb", "data.mapped", "mlflow.tracking_uri", "mlflow.experiment", "storage_path", "ray.address",
          "checkpoints.keep", "failures", "eval_batch_size")
OWN: tuple[Key, ...] = (
    Key("methods", list, [], "methods to compare, comma-separated (one task family); required"),
    Key("seeds", list, 3, "training seeds: a count N (seeds 0..N-1) or a list [0,3,7]"),
    Key("variants", list, [], "ablations from search_spaces/<method>.py VARIANTS, comma-separated, or all; "
        "each applies to the methods that declare it (base, the unmodified point, always runs)"),
    Key("point", str, "paper", "configuration compared: paper (PAPER), defaults (config defaults) or a "
        "name from POINTS; a method that does not declare it runs paper"),
    Key("from_sweep", list, [], "finished sweeps, comma-separated: their method runs the sweep's best "
        "configuration instead of the point"),
    Key("verbose", int, 0, "0: one line per trial start/end; 1-3: Ray Tune's status tables too",
        lambda v: None if 0 <= v <= 3 else "0, 1, 2, 3"),
)
OWN_INDEX = {k.name: k for k in OWN}
HELP = {  # the shared keys whose meaning differs in a comparison
    "name": "comparison name (default: compare-<timestamp>); also the Ray experiment folder",
    "epochs": "epochs per trial (all of them, unless converge.patience stops a flat trial earlier)",
    "concurrent": "maximum concurrent trials",
    "smoke": "tiny comparison: smoke-sized data, 2 epochs, seeds 0 and 1 (unless given)",
    "search.metric": "validation metric reported per trial (default: the method's task's: box_micro for "
                     "WSVOG, r1_iou50 for moments, m_viou for tubes)",
}
@dataclasses.dataclass
class Cell:
    method: str
    variant: str
    seed: int
    params: dict[str, Any]  # model + optimiser hyperparameters, everything set
    point: str = "paper"  # the point the cell's configuration starts from ("from_sweep" for a sweep's best)
    shared: dict = dataclasses.field(default_factory=dict)  # shared stages (orchestration/shared_stages.py)

    def label(self) -> str:
        return f"{self.method}/{self.variant}/seed{self.seed}"


@dataclasses.dataclass
class CompareConfig:
    values: dict[str, Any]  # own keys (normalised) + the shared keys as parsed by the sweep's config
    methods: list[str]
    seeds: list[int]
    variants: list[str]
    sweeps: dict[str, SweepConfig]  # per method: the sweep configuration its cells run under
    cells: list[Cell]
    from_sweep: dict[str, dict]  # method -> {"sweep": name, "run_id": best child, "params": {...}}
    argv: list[str]

    def __getitem__(self, key):
        return self.values[key]

    @property
    def first(self) -> SweepConfig:
        return self.sweeps[self.methods[0]]

    @property
    def task(self) -> str:
        return self.first.task


# ------------------------------------------------------------------------------------- parsing
def _as_list(name: str, raw: Any) -> list:
    if isinstance(raw, ChoiceSweep):
        return list(raw.list)
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if raw is None or raw == "":
        return []
    if isinstance(raw, dict):
        raise ConfigError(f"{name}={raw!r} has the wrong type; expected a comma-separated list")
    return [raw]


def _seeds(raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise ConfigError(f"seeds={raw} is out of range; allowed: a count >= 1 or a list of seeds >= 0")
        return list(range(raw))
    if isinstance(raw, (list, tuple, ChoiceSweep)):
        seeds = _as_list("seeds", raw)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ConfigError(f"seeds={raw!r} is out of range; allowed: a count >= 1 or a list of seeds >= 0")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds={raw!r} repeats a seed; allowed: distinct seeds")
        return seeds
    raise ConfigError(f"seeds={raw!r} has the wrong type; expected a count or a list of integers")


def _typed(method: str, name: str, text: str) -> Any:
    """A hyperparameter's value as MLflow stored it (a string) back in its declared type."""
    fields = {**registry.config_fields(method), **{f.name: f for f in dataclasses.fields(OptimConfig)}}
    typ = field_type(fields[name])
    if typ is bool:
        return text.strip().lower() == "true"
    return typ(float(text)) if typ is int else typ(text)


def _best_of_sweep(name: str, tracking_uri: str, experiment: str) -> dict:
    """The best trial of the finished sweep ``name``: its method and hyperparameters."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"from_sweep={name}: no MLflow store at {tracking_uri}; allowed: the name of a "
                          f"finished sweep recorded there (mlflow.tracking_uri=...)")
    from mlflow.tracking import MlflowClient  # only for from_sweep=: parsing loads MLflow for nothing else

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.sweep = '{name}'", max_results=10000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("kind", "sweep") == "sweep"]
    if not parents:
        raise ConfigError(f"from_sweep={name}: no sweep named {name} in MLflow experiment '{experiment}' at "
                          f"{tracking_uri}; allowed: the name of a finished sweep")
    parent = max(parents, key=lambda r: r.info.start_time)
    best_id = parent.data.tags.get("best_run_id")
    if not best_id:
        raise ConfigError(f"from_sweep={name}: the sweep has no best trial (status {parent.info.status}); "
                          f"allowed: a sweep with at least one finished trial")
    method = parent.data.tags.get("method", "")
    best = client.get_run(best_id)
    known = set(registry.config_fields(method)) | set(OPTIM_KEYS) if method in registry.names() else set()
    params = {k: _typed(method, k, v) for k, v in best.data.params.items() if k in known}
    return {"sweep": name, "method": method, "run_id": best_id, "params": params,
            "metric": parent.data.params.get("metric", "")}


def _split(argv: list[str], pairs) -> tuple[dict[str, Any], list[str], list[tuple[str, str]], set[str]]:
    """The comparison's own keys, the sweep keys it shares (as given), the pins, the keys seen."""
    seen: set[str] = set()
    own: dict[str, Any] = {k.name: k.default for k in OWN}
    shared_args: list[str] = []
    pins: list[tuple[str, str]] = []  # (key, the argument as given)
    for (key, raw), arg in zip(pairs, argv):
        if key in seen:
            raise ConfigError(f"{key} is given twice")
        seen.add(key)
        if key in OWN_INDEX:
            own[key] = raw
        elif key in SHARED:
            shared_args.append(arg)
        elif key.startswith(sweep_config.PREFIXES):
            pins.append((key, arg))
        else:
            allowed = ", ".join([*OWN_INDEX, *SHARED])
            hint = " (a comparison trains fixed configurations: no search keys)" if key in sweep_config.KEY_INDEX else ""
            raise ConfigError(f"unknown key '{key}'{hint}; allowed: {allowed}, model.<hyperparameter>, "
                              f"optim.<{'|'.join(OPTIM_KEYS)}>")
    return own, shared_args, pins, seen


def _methods(raw: Any) -> list[str]:
    methods = [str(m) for m in _as_list("methods", raw)]
    if not methods:
        raise ConfigError(f"methods= is required; allowed: a comma-separated list of {', '.join(registry.names())}")
    for m in methods:
        if m not in registry.names():
            raise ConfigError(f"methods: '{m}' is unknown; allowed: {', '.join(registry.names())}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods={','.join(methods)} repeats a method; allowed: distinct methods")
    task_of = {m: registry.task_of(m) for m in methods}
    if len(set(task_of.values())) > 1:
        raise ConfigError("methods=" + ",".join(methods) + " span several task families ("
                          + ", ".join(f"{m}: {t}" for m, t in task_of.items())
                          + "); allowed: methods of one task family (one dataset, one table)")
    return methods


def _verbose(raw: Any) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ConfigError(f"verbose={raw!r} has the wrong type; expected an integer")
    if (allowed := OWN_INDEX["verbose"].check(raw)) is not None:
        raise ConfigError(f"verbose={raw} is out of range; allowed: {allowed}")
    return raw


def _sweeps(methods: list[str], shared_args: list[str], pins: list[tuple[str, str]]) -> dict[str, SweepConfig]:
    """The sweep's own parsing and validation of the shared keys and of the pins, per method."""
    sweeps: dict[str, SweepConfig] = {}
    used: set[str] = set()
    for m in methods:
        fields = registry.config_fields(m)
        mine = []
        for key, arg in pins:
            group, _, name = key.partition(".")
            if (group == "model" and name in fields) or (group == "optim" and name in OPTIM_KEYS):
                mine.append(arg)
                used.add(key)
        sweeps[m] = sweep_config.parse([f"method={m}", *shared_args, *mine])
    for key, _ in pins:
        if key not in used:
            group, _, name = key.partition(".")
            raise ConfigError(f"none of {', '.join(methods)} has the {group} hyperparameter '{name}'")
    return sweeps


def _variants(raw: Any, methods: list[str], declared: dict[str, dict]) -> list[str]:
    variants = [str(v) for v in _as_list("variants", raw)]
    if variants == ["all"]:
        variants = sorted({v for d in declared.values() for v in d}, key=lambda v: [
            *[v2 for m in methods for v2 in declared[m]]].index(v))
    for v in variants:
        if v != search_spaces.RESERVED_VARIANT and not any(v in d for d in declared.values()):
            allowed = sorted({x for d in declared.values() for x in d}) or ["none declared"]
            raise ConfigError(f"variants: '{v}' is declared by none of {', '.join(methods)} "
                              f"(search_spaces/<method>.py VARIANTS); allowed: all, {', '.join(allowed)}")
    return [v for v in variants if v != search_spaces.RESERVED_VARIANT]


def _from_sweeps(raw: Any, methods: list[str], tracking_uri: str, experiment: str) -> dict[str, dict]:
    from_sweep: dict[str, dict] = {}
    for name in [str(s) for s in _as_list("from_sweep", raw)]:
        if (allowed := name_problem(name)) is not None:
            raise ConfigError(f"from_sweep: {name[:120]!r} is not a plain name; allowed: {allowed}")
        best = _best_of_sweep(name, tracking_uri, experiment)
        if best["method"] not in methods:
            raise ConfigError(f"from_sweep={name} is a sweep of {best['method'] or 'an unknown method'}, which is "
                              f"not compared; allowed: sweeps of {', '.join(methods)}")
        if best["method"] in from_sweep:
            raise ConfigError(f"from_sweep: {from_sweep[best['method']]['sweep']} and {name} are both sweeps of "
                              f"{best['method']}; allowed: one sweep per method")
        from_sweep[best["method"]] = best
    return from_sweep


def _cells(sweeps: dict[str, SweepConfig], variants: list[str], declared: dict[str, dict], seeds: list[int],
           point: str, from_sweep: dict[str, dict]) -> tuple[list[Cell], dict[str, str]]:
    """Every (method, variant, seed) with its full configuration, and the point each method starts from;
    every row's first seed first, then every row's second, and so on."""
    methods = list(sweeps)
    named_points = {m: search_spaces.points(m) for m in methods if m not in from_sweep}
    if named_points and not any(point in named for named in named_points.values()):
        allowed = list(dict.fromkeys(p for named in named_points.values() for p in named))
        raise ConfigError(f"point={point} is not declared for {', '.join(named_points)}; allowed: {', '.join(allowed)}")
    cells: list[Cell] = []
    points: dict[str, str] = {}
    for m, cfg in sweeps.items():
        if m in from_sweep:
            base = dict(from_sweep[m]["params"])
            points[m] = "from_sweep"
        else:
            points[m] = point if point in named_points[m] else "paper"
            base = named_points[m][points[m]]
        fixed = getattr(search_spaces.load(m), "FIXED", {})
        fields = registry.config_fields(m)
        for v in [search_spaces.RESERVED_VARIANT, *[v for v in variants if v in declared[m]]]:
            params = {**base, **fixed, **declared[m].get(v, {}), **cfg.model, **cfg.optim}
            params = {k: val for k, val in params.items() if k in fields or k in OPTIM_KEYS}
            try:
                registry.make_config(m, {k: val for k, val in params.items() if k in fields})
                OptimConfig(**{k: val for k, val in params.items() if k in OPTIM_KEYS})
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{m} variant {v}: {str(e).splitlines()[0]}") from None
            cells += [Cell(m, v, s, params, points[m]) for s in seeds]
    # seed-major (Tune starts trials in this order): a comparison stopped early has the same seeds in every row
    cells.sort(key=lambda c: seeds.index(c.seed))
    return cells, points


def parse(argv: list[str]) -> CompareConfig:
    own, shared_args, pins, seen = _split(argv, parse_overrides(argv, allow_sweep=True))  # methods=a,b, variants=a,b
    methods = _methods(own["methods"])
    seeds = _seeds(own["seeds"])
    verbose = _verbose(own["verbose"])
    point = coerce("point", str, own["point"])
    sweeps = _sweeps(methods, shared_args, pins)
    declared = {m: search_spaces.variants(m) for m in methods}
    variants = _variants(own["variants"], methods, declared)
    first = sweeps[methods[0]]
    tracking_uri = default_tracking_uri(first["mlflow.tracking_uri"])
    from_sweep = _from_sweeps(own["from_sweep"], methods, tracking_uri, first["mlflow.experiment"])
    cells, points = _cells(sweeps, variants, declared, seeds, point, from_sweep)
    values = {**{k: v for k, v in first.values.items() if k in SHARED}, "methods": methods, "seeds": seeds,
              "variants": variants, "point": point, "points": points, "verbose": verbose,
              "from_sweep": [b["sweep"] for b in from_sweep.values()], "tracking_uri": tracking_uri}
    if first["smoke"]:  # a smoke comparison: smoke data, 2 epochs, 2 seeds unless given
        if "epochs" not in seen:
            values["epochs"] = 2
        if "seeds" not in seen:
            values["seeds"] = seeds = [0, 1]
            cells = [c for c in cells if c.seed in seeds]
    return CompareConfig(values=values, methods=methods, seeds=seeds, variants=variants, sweeps=sweeps,
                         cells=cells, from_sweep=from_sweep, argv=list(argv))


def help_text(argv: list[str] | None = None) -> str:
    """``--help``; with ``methods=…`` among ``argv`` the metric line names each given method's default."""
    given = [a.split("=", 1)[1] for a in (argv or []) if a.startswith("methods=")]
    methods = [m for m in (given[-1].split(",") if given else []) if m in registry.names()]
    lines = [
        "usage: python -m orchestration.compare methods=<m1,m2,...> [key=value ...]",
        "",
        "Train fixed configurations of several methods, ablations and seeds as Ray Tune trials (one",
        "trial per method x variant x seed) and record them under one MLflow parent run with a table",
        "of mean ± std and the 95% confidence interval (Student's t) per metric and split.",
        "",
        "keys (default):",
    ]
    helps = dict(HELP, **({"search.metric": sweep_config.metric_help(methods, "validation metric reported per trial")}
                          if methods else {}))
    keys = [*OWN, *(dataclasses.replace(sweep_config.KEY_INDEX[k], help=helps[k]) if k in helps
                     else sweep_config.KEY_INDEX[k] for k in SHARED)]
    lines += key_lines(keys, {
        "model.<name>": "pin a hyperparameter (for every compared method that has it)",
        "optim.<name>": f"pin an optimiser setting: {', '.join(OPTIM_KEYS)}"})
    lines += [
        "",
        "variants (search_spaces/<method>.py VARIANTS) and points (paper, defaults, POINTS):",
    ]
    for m in registry.names():
        v = search_spaces.variants(m)
        lines.append(f"  {m:<8} variants: {', '.join(f'{k} {d}' for k, d in v.items()) or '-'}; "
                     f"points: {', '.join(search_spaces.points(m))}")
    lines += [
        "",
        "examples:",
        "  python -m orchestration.compare methods=stvg,causal seeds=3 variants=all epochs=5",
        "  python -m orchestration.compare methods=cpl,ccr seeds=[0,1,2] epochs=12",
        "  python -m orchestration.compare methods=causal variants=no_bda from_sweep=causal-20261123-101500",
        "  python -m orchestration.compare methods=stvg,causal smoke=true",
    ]
    return "\n".join(lines)
