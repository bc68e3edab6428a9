"""Everything a sweep (or a comparison) checks before Ray starts.

A mistake found here is one line naming what is wrong and what is allowed (a :class:`ConfigError`;
the entry points print it and exit with 2), before ``ray.init`` and before anything is written at
a destination:

* :func:`open_dataset` — ``data.root`` semantics (a given root must hold a dataset unless
  ``data.generate=true``; the default ``./data/<benchmark>`` is generated on first use) and the
  object store behind it (credentials, bucket, access, endpoint), bounded in time;
* :func:`check_services` — the Ray Tune ``storage_path`` store and the MLflow tracking server
  (reachable, and authorised, within :data:`TIMEOUT_S`);
* :func:`check_configurations` — each configuration to train is built on the driver (method
  config, optimiser config, and the model itself with the real :class:`DataInfo`), and the batch
  size of each of its stages is checked against the training samples per worker (rows for wsvog,
  queries for moment and tube data, whose rows are videos);
* :func:`clip_space` — each searched range is probed at its ends (every value of a choice)
  against these data; a range whose end cannot be built is clipped to the part that can (integer
  ranges, choices) or rejected with the reason (float ranges, or nothing left).

:func:`preflight` runs the last three for a parsed sweep configuration; ``orchestration.compare``
calls :func:`check_configurations` (and :func:`check_services`) with its own configurations.
This module imports neither Ray nor MLflow.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from grounding import recipes, tasks
from grounding.credentials import scrub, strip_userinfo
from grounding.data import benchmarks, storage
from grounding.data.cache import ShardCache, default_cache_dir
from grounding.data.converters.common import val_split_advice
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset, rank_range
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry
from search_spaces import Choice, Float, Param

from .cli.keys import ConfigError, absolute_uri
from .cli.sweep_args import SweepConfig

TIMEOUT_S = 10.0  # bound of each reachability check


# ----------------------------------------------------------------------------- bounded calls
def _bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """``fn()`` in a daemon thread; a ``TimeoutError`` naming ``what`` if it takes longer."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name=f"preflight-{what}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def store_problem(exc: BaseException) -> str:
    """The cause of an object-store failure in a few words (never a credential)."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return ("no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "(or run on a node with an instance role)")
    if name in ("ProfileNotFound",):
        return f"AWS profile not found ({text})"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ServerTimeoutError") or isinstance(exc, (ConnectionError, socket.gaierror)):
        return f"the object store endpoint is unreachable ({text or name}); check AWS_ENDPOINT_URL_S3 and the network"
    if isinstance(exc, TimeoutError):
        return f"the object store did not answer ({text}); check AWS_ENDPOINT_URL_S3 and the network"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text or "403" in text:
        return f"access denied ({text or name}); the credentials in use may not read this bucket"
    if "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return f"the credentials were rejected ({text})"
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        if "bucket" in text.lower():
            return "the bucket does not exist"
        return "nothing there"
    return f"{name}: {text}"


def _bucket(url: str) -> tuple[Any, str, str]:
    fs, path = storage.filesystem(url)
    return fs, path, path.split("/", 1)[0]


def probe_store(url: str, key: str, timeout: float = TIMEOUT_S) -> bool:
    """Check that the object store behind ``url`` answers and lets these credentials see its
    bucket; returns whether ``url`` holds a ``manifest.json``. Raises a one-line ConfigError."""
    def work():
        fs, path, bucket = _bucket(url)
        if url.startswith(("s3://", "s3a://")):
            try:
                fs.info(bucket)  # credentials, endpoint, bucket, access
            except FileNotFoundError:
                raise ConfigError(f"{key}={scrub(url)}: the bucket does not exist") from None
        return fs.exists(storage.join(path, "manifest.json"))

    try:
        return bool(_bounded(work, timeout, key))
    except ConfigError:
        raise
    except BaseException as e:  # noqa: BLE001 - every store failure becomes one line
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"{key}={scrub(url)}: {store_problem(e)}") from None


# ------------------------------------------------------------------------------- the dataset
def default_root(cfg: SweepConfig, cwd: Path, overrides: dict) -> str:
    bench = benchmarks.get(cfg.benchmark)
    suffix = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    return str(cwd / "data" / f"{bench.name}{suffix}")


def open_dataset(cfg: SweepConfig, cwd: Path, log: Callable[[str], None] = print) -> Dataset:
    """The sweep's dataset, verified against its manifest; ConfigError for any problem.

    A ``data.root`` the user gives (on the command line or through ``GROUNDING_DATA_ROOT``) must
    hold a dataset, unless ``data.generate=true`` asks to generate the benchmark there (local
    roots only); the default root ``<cwd>/data/<benchmark>[-args]`` is generated on first use.
    """
    bench = benchmarks.get(cfg.benchmark)
    overrides = dict(bench.smoke) if cfg["smoke"] else {}
    if cfg["data.seed"]:
        overrides["seed"] = cfg["data.seed"]
    if cfg["data.dim"]:
        overrides["D"] = cfg["data.dim"]
    given = bool(cfg["data.root"])
    if "\0" in cfg["data.root"]:
        raise ConfigError(f"data.root={cfg['data.root']!r}: a path cannot hold a NUL character")
    root = absolute_uri(cfg["data.root"] or default_root(cfg, cwd, overrides))
    if not given or (cfg["data.generate"] and not storage.is_remote(root)):
        check_writable(str(Path(root).parent), "data.root" if given else "the default data folder",
                       None if given else str(cwd / "data"))
    if cfg["data.cache_dir"] or storage.is_remote(root):
        check_writable(str(cfg["data.cache_dir"] or default_cache_dir()), "data.cache_dir")
    cache = ShardCache(cfg["data.cache_dir"] or None, int(cfg["data.cache_max_gb"] * 2**30))
    t0 = time.time()
    try:
        if storage.is_remote(root):
            if not probe_store(root, "data.root"):
                raise ConfigError(f"data.root={root} holds no dataset (no manifest.json); publish one there with "
                                  f"python -m grounding.data publish LOCAL {root}")
            ds = _bounded(lambda: Dataset.open(root, cache=cache), TIMEOUT_S * 3, "data.root")
        else:
            fs, p = storage.filesystem(root)
            exists = fs.exists(storage.join(p, "manifest.json"))
            if given and not exists and not cfg["data.generate"]:
                what = "does not exist" if not fs.exists(p) else "holds no dataset (no manifest.json)"
                raise ConfigError(f"data.root={root} {what}; allowed: a dataset folder or URL, data.generate=true "
                                  f"to generate the {bench.name} benchmark there, or no data.root "
                                  f"(the default {default_root(cfg, cwd, overrides)})")
            if exists and given:
                ds = Dataset.open(root, cache=cache)  # a dataset the user chose: used as it is
            else:  # generated on first use, reused only with the same arguments
                ds = benchmarks.ensure(root, bench.name, overrides, log=log)
        if ds.manifest.task != cfg.task:
            raise ConfigError(f"data.root={root} holds a {ds.manifest.task} dataset; method {cfg.method} needs "
                              f"{cfg.task}")
        missing = [sp for sp in ("train", "val") if sp not in ds.manifest.splits]
        if missing:
            advice = val_split_advice(ds.manifest)  # converted train/test-only data: the flags that add a val split
            raise ConfigError(f"data.root={root} has no {' or '.join(missing)} split (it has "
                              f"{', '.join(ds.manifest.splits)}); a sweep trains on train and ranks trials on val"
                              + (f"; {advice}" if advice else ""))
        with_boxes = ((ds.manifest.extra or {}).get("stats") or {}).get("segments_with_boxes")
        if isinstance(with_boxes, dict) and with_boxes.get("val") == 0:  # converted wsvog data (issue 24)
            raise ConfigError(f"data.root={root}: its val split has no valid ground-truth box "
                              f"(extra.stats.segments_with_boxes), so box/query accuracy cannot rank trials; "
                              f"convert it again with the val box file (--boxes)")
        ds = Dataset.open(root, cache=cache)
        ds.verify()  # every shard against the manifest, before any trial starts
    except ConfigError:
        raise
    except (DataError, ValueError, FileNotFoundError) as e:
        raise ConfigError(scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)) from None
    except Exception as e:  # noqa: BLE001 - a store error while reading: one line, no traceback
        if not storage.is_remote(root):
            raise
        raise ConfigError(f"data.root={root}: {store_problem(e)}") from None
    log(f"data {root} ({ds.manifest.task}, digest {ds.digest[:12]}) ready in {time.time() - t0:.1f}s")
    return ds


# -------------------------------------------------------------------------------- services
def check_tracking(uri: str, experiment: str = "", timeout: float = TIMEOUT_S) -> None:
    """The MLflow tracking store answers (an HTTP server: within ``timeout``, credentials
    accepted); a local SQLite/file store: its folder exists. One-line ConfigError otherwise."""
    shown = scrub(uri)
    if uri.startswith(("http://", "https://")):
        base, user, password = strip_userinfo(uri)
        user = user or os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
        query = urllib.parse.urlencode({"experiment_name": experiment or "Default"})
        req = urllib.request.Request(f"{base.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}")
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")

        def work():
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.status, ""
            except urllib.error.HTTPError as e:
                return e.code, e.read(2000).decode("utf-8", "replace")

        try:
            code, body = _bounded(work, timeout, "mlflow")
        except (TimeoutError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise ConfigError(f"mlflow.tracking_uri={shown}: the tracking server is unreachable ({reason}); "
                              f"start it, or omit mlflow.tracking_uri for the local sqlite store") from None
        if code in (401, 403):
            raise ConfigError(f"mlflow.tracking_uri={shown}: the tracking server refused the credentials (HTTP "
                              f"{code}); set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
                              f"MLFLOW_TRACKING_TOKEN")
        if code == 404 and "RESOURCE_DOES_NOT_EXIST" in body:
            return  # an MLflow server without this experiment yet (the sweep creates it)
        if code != 200:
            raise ConfigError(f"mlflow.tracking_uri={shown}: the tracking server answered HTTP {code}; "
                              f"allowed: an MLflow tracking server")
        return
    if uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"mlflow.tracking_uri={shown}: a file store (a folder) is not supported here; allowed: "
                          f"a SQLite store (sqlite:///path/to/mlflow.db) or a tracking server (http://host:5000)")
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///") or "\0" in uri:
            raise ConfigError(f"mlflow.tracking_uri={shown}: allowed: sqlite:///<path to a database file>")
        path = Path(uri[len("sqlite:///"):])
        folder = path.parent
        if not folder.is_dir():
            raise ConfigError(f"mlflow.tracking_uri={shown}: folder {folder} does not exist; allowed: a store "
                              f"in an existing folder")
        if path.is_dir():
            raise ConfigError(f"mlflow.tracking_uri={shown}: {path} is a folder; allowed: a database file")
        check_writable(str(folder), "mlflow.tracking_uri", shown)
        return
    scheme = uri.split("://", 1)[0].lower()
    if scheme.split("+")[0] not in ("postgresql", "mysql", "mssql", "databricks", "uc"):
        raise ConfigError(f"mlflow.tracking_uri={shown}: scheme {scheme}:// is not a tracking store; allowed: "
                          f"sqlite:///path/to/mlflow.db, http(s)://server, postgresql://, mysql://, mssql://")
    # a database URI (postgresql://…, mysql://…): the host answers on its port
    parsed = urllib.parse.urlparse(strip_userinfo(uri)[0])
    if parsed.hostname:
        port = parsed.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(parsed.scheme.split("+")[0])
        if port:
            try:
                _bounded(lambda: socket.create_connection((parsed.hostname, port), timeout=timeout).close(),
                         timeout, "mlflow")
            except (TimeoutError, OSError) as e:
                raise ConfigError(f"mlflow.tracking_uri={shown}: the database is unreachable ({e})") from None


def check_writable(target: str, key: str, shown: str | None = None, timeout: float = TIMEOUT_S) -> None:
    """``target`` (a local folder, existing or to be created, or an object-store URL) can be
    written with these permissions/credentials: a probe file is created and removed in its nearest
    existing folder (nothing else is created), or a probe object under the URL. One-line
    ConfigError naming ``key`` otherwise."""
    shown = shown or scrub(target)
    if "\0" in target:
        raise ConfigError(f"{key}={shown!r}: a path cannot hold a NUL character")
    probe_name = f".grounding-write-probe-{uuid.uuid4().hex[:12]}"
    if storage.is_remote(target):
        probe_store(target, key, timeout)

        def work():
            fs, path = storage.filesystem(target)
            probe = storage.join(path, probe_name)
            with fs.open(probe, "wb") as f:
                f.write(b"probe")
            fs.rm(probe)

        try:
            _bounded(work, timeout, key)
        except BaseException as e:  # noqa: BLE001 - every store failure becomes one line
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ConfigError(f"{key}={shown}: cannot write there ({store_problem(e)})") from None
        return
    folder = Path(target.removeprefix("file://")).expanduser().absolute()
    try:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(f"{key}={shown}: {folder} is not a folder; allowed: a folder this user can write")
        probe = folder / probe_name
        with open(probe, "xb"):
            pass
        probe.unlink()
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(f"{key}={shown}: cannot write in {folder} ({e.strerror or type(e).__name__}); "
                          f"allowed: a folder this user can write") from None


def check_services(tracking_uri: str, storage_path: str, experiment: str = "") -> None:
    """MLflow and the Tune storage before Ray starts (each bounded by :data:`TIMEOUT_S`)."""
    check_tracking(tracking_uri, experiment)
    check_writable(storage_path, "storage_path")


# --------------------------------------------------------------------- configurations vs data
@dataclasses.dataclass
class DataFacts:
    """What the checks need to know about a dataset, read once (side tables only)."""

    root: str
    info: Any  # DataInfo
    train_rows: int
    # samples (what a batch is made of) per training row: a moment/tube row is a video holding
    # several queries; None = one sample per row (wsvog: a row is a segment)
    train_samples: list[int] | None = None

    @classmethod
    def of(cls, ds: Dataset, seed: int = 0) -> "DataFacts":
        task = tasks.get(ds.manifest.task)
        samples = None
        if ds.manifest.task != "wsvog":  # only the id column: no feature is decoded
            ids = ds.read_split("train", columns=["sample_ids"])["sample_ids"]
            samples = [len(x) for x in ids.to_pylist()]
        return cls(ds.root, task.data_info(ds, None, seed), ds.manifest.split_rows("train"), samples)

    @property
    def unit(self) -> str:
        return "rows" if self.train_samples is None else "queries"

    def samples_per_worker(self, workers: int = 1) -> int:
        """The fewest training samples any of ``workers`` ranks holds (ranks share rows, as
        :meth:`Dataset.read_split` does)."""
        workers = max(1, workers)
        if self.train_samples is None:
            return self.train_rows // workers
        return min(sum(self.train_samples[slice(*rank_range(len(self.train_samples), r, workers))])
                   for r in range(workers))

    def split_text(self, workers: int = 1) -> str:
        what = (f"{self.train_rows} rows" if self.train_samples is None else
                f"{sum(self.train_samples)} queries in {self.train_rows} videos")
        return what + (f" over workers={workers}" if workers > 1 else "")

    def describe(self, workers: int = 1) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.info.dims.items())
        n = self.train_rows if self.train_samples is None else sum(self.train_samples)
        per = f", {self.samples_per_worker(workers)} per worker" if workers > 1 else ""
        return f"data {self.root}: {dims}, {n} train {self.unit}{per}"


def _origin_note(message: str, sources: dict[str, str]) -> str:
    names = [n for n in dict.fromkeys(re.findall(r"\b(\w+)=", message)) if n in sources]
    return "".join(f"; {n} {sources[n]}" for n in names if sources[n])


def problem(method: str, facts: DataFacts, values: dict[str, Any], workers: int = 1,
            _cache: dict | None = None) -> tuple[str, str] | None:
    """Why ``values`` (model and optimiser hyperparameters; the rest at their config defaults)
    cannot train ``method`` on these data: ``(group, message)``, or None if it can."""
    fields = registry.config_fields(method)
    model = {k: v for k, v in values.items() if k in fields}
    optim = {k: v for k, v in values.items() if k in OPTIM_KEYS}
    unknown = sorted(set(values) - set(model) - set(optim))
    if unknown:
        return "model", f"{unknown[0]} is not a hyperparameter of {method} or the optimiser"
    try:
        oc = OptimConfig(**optim)
    except (ValueError, TypeError) as e:
        return "optim", str(e)
    per_worker = facts.samples_per_worker(workers)
    if oc.batch_size > per_worker:
        return "optim", (f"batch_size={oc.batch_size} is larger than the training split "
                         f"({facts.split_text(workers)}); allowed: <= {per_worker}")
    # every stage's own batch (a recipe stage may set its optimiser; grounding.recipes)
    try:
        _, stages = recipes.plan(method, {}, dict(values), 1, "-")
    except (ValueError, TypeError, KeyError):
        stages = {}  # the model build below names the problem
    for st in stages.values():
        if st.optim.batch_size > per_worker:
            return "optim", (f"batch_size={st.optim.batch_size} (of stage {st.name}) is larger than the training "
                             f"split ({facts.split_text(workers)}); allowed: <= {per_worker}")
    key = tuple(sorted((k, repr(v)) for k, v in model.items()))
    if _cache is not None and key in _cache:
        return _cache[key]
    result = None
    try:
        cfg = registry.make_config(method, model)
        with torch.no_grad():
            registry.get(method)(cfg, facts.info)  # the model itself, on the driver's CPU
    except (ValueError, TypeError, KeyError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        result = ("model", str(e).strip("'\""))
    if _cache is not None:
        _cache[key] = result
    return result


def _fmt(group: str, message: str, sources: dict[str, str]) -> str:
    first = re.sub(r"^\w+Config\.", "", message.strip().splitlines()[0])
    return f"{group}.{first}{_origin_note(first, sources)}"


def check_configurations(ds: Dataset | DataFacts, method: str, configurations: Iterable,
                         workers: int = 1, seed: int = 0, sources: dict[str, str] | None = None) -> None:
    """Build every configuration of ``method`` for the data of ``ds`` on the driver, before Ray.

    ``configurations``: dicts of hyperparameter values (model and optimiser; the rest at the
    config defaults), or ``(label, dict)`` pairs; the label names the configuration in the error
    (e.g. "the published point"). ``sources`` says where a value came from (``{"embed_dim":
    "is held fixed by search_spaces/causal.py"}``). Raises a one-line ConfigError naming the value
    in effect, what is allowed, the configuration and the data.
    """
    facts = ds if isinstance(ds, DataFacts) else DataFacts.of(ds, seed)
    cache: dict = {}
    for i, item in enumerate(configurations):
        label, values = item if isinstance(item, tuple) else (f"configuration {i + 1}", item)
        found = problem(method, facts, dict(values), workers, cache)
        if found:
            group, message = found
            raise ConfigError(f"{_fmt(group, message, sources or {})} ({label}; {facts.describe(workers)})")


def clip_space(method: str, facts: DataFacts, space: dict[str, Param], base: dict[str, Any],
               workers: int = 1, space_file: str = "") -> tuple[dict[str, Param], list[str]]:
    """Probe each searched range at its ends (every value of a choice) with the other values at
    ``base``; clip integer ranges and choices to the values these data allow, reject the rest.
    Returns the new space and one note per clipped range."""
    space_file = space_file or f"search_spaces/{method}.py"
    cache: dict = {}
    out: dict[str, Param] = {}
    notes: list[str] = []

    def bad(name, v, values):
        return problem(method, facts, {**values, name: v}, workers, cache)

    defaults = dataclasses.asdict(registry.get(method).Config())
    known = {**defaults, **base}
    for name, p in space.items():
        values = {**base, **p.when}
        if any(known.get(k, v) != v for k, v in p.when.items() if k not in space):
            out[name] = p  # a condition fixed elsewhere switches this parameter off
            continue
        values = {k: v for k, v in values.items() if k != name}
        group = "optim" if name in OPTIM_KEYS else "model"
        if isinstance(p, Choice):
            kept = [v for v in p.values if not bad(name, v, values)]
            if not kept:
                why = bad(name, p.values[0], values)
                raise ConfigError(f"searched {group}.{name} in {list(p.values)} ({space_file}) has no value these "
                                  f"data allow: {_fmt(*why, {})}; pin {group}.{name}=... ({facts.describe(workers)})")
            if len(kept) < len(p.values):
                why = bad(name, next(v for v in p.values if v not in kept), values)
                notes.append(f"{name}: searched {list(kept)} instead of {list(p.values)} for these data "
                             f"({_fmt(*why, {})})")
                out[name] = dataclasses.replace(p, values=tuple(kept))
            else:
                out[name] = p
            continue
        lo_bad, hi_bad = bad(name, p.low, values), bad(name, p.high, values)
        if not lo_bad and not hi_bad:
            out[name] = p
            continue
        why = lo_bad or hi_bad
        reject = ConfigError(f"searched {group}.{name} in [{p.low}, {p.high}] ({space_file}) cannot be used with "
                             f"these data: {_fmt(*why, {})}; pin {group}.{name}=... ({facts.describe(workers)})")
        if isinstance(p, Float) or (lo_bad and hi_bad):
            raise reject
        # an integer range with one bad end: bisect for the last good value from the good end
        good, worse = (p.low, p.high) if hi_bad else (p.high, p.low)
        while abs(worse - good) > 1:
            mid = (good + worse) // 2
            if bad(name, mid, values):
                worse = mid
            else:
                good = mid
        lo, hi = (p.low, good) if hi_bad else (good, p.high)
        notes.append(f"{name}: searched [{lo}, {hi}] instead of [{p.low}, {p.high}] for these data "
                     f"({_fmt(*why, {})})")
        out[name] = dataclasses.replace(p, low=lo, high=hi)
    return out, notes


@dataclasses.dataclass
class Checked:
    space: dict[str, Param]
    notes: list[str]


def preflight(cfg: SweepConfig, ds: Dataset, configurations: list, space: dict[str, Param] | None = None,
              fixed: dict[str, Any] | None = None) -> Checked:
    """The data-dependent checks of a sweep: ``configurations`` (``(label, values)`` pairs:
    the fixed and pinned values, the published point, named points) are built on the driver, then
    the searched ``space`` is clipped to what these data allow (probed around the first
    configuration). ConfigError (one line) on the first problem."""
    method, workers = cfg.method, cfg["workers"]
    facts = DataFacts.of(ds, cfg["seed"])
    sources = {}
    space_file = f"search_spaces/{method}.py"
    for k in (fixed or {}):
        if k in cfg.model or k in cfg.optim:
            sources[k] = "is pinned on the command line"
        else:
            sources[k] = f"is held fixed by {space_file} (pin model.{k}=... or optim.{k}=... to change it)"
    check_configurations(facts, method, configurations, workers, cfg["seed"], sources)
    if not space:
        return Checked({}, [])
    base = dict(configurations[0][1] if isinstance(configurations[0], tuple) else configurations[0]) \
        if configurations else dict(fixed or {})
    new, notes = clip_space(method, facts, space, base, workers, space_file)
    return Checked(new, notes)
