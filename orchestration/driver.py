"""The driver that a sweep and a comparison share: everything between a validated command line and
the summary, in the order it happens.

- :func:`trial_spec`: the one :class:`~orchestration.worker.spec.TrialSpec` of a run, built here only
- :func:`storage_path`: where Ray writes (MLflow: :func:`orchestration.cli.keys.tracking_uri`)
- :class:`Driver`: signals (:class:`Interrupt`), Ray (:func:`start_ray`, the local-resource refusal),
  the MLflow parent run, the sender, the trial callbacks, shared stages, ``Tuner.fit`` with the
  catch-up of test evaluations, and the close (ray shutdown, the sender's last records, the summary)

:mod:`orchestration.sweep_run` and :mod:`orchestration.compare_run` say *what* runs (a search, a grid
of cells); this module says *how* it runs. It is imported after the command line was validated.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import ray
from mlflow.tracking import MlflowClient

from grounding.credentials import scrub, scrub_output

from .callbacks import Children, FinalTest, MlflowTrialLogger, ProgressLines, catch_up
from .cli.keys import absolute_uri, fail
from .shared_stages import ensure_shared
from .tracking import lineage, runs
from .tracking.sender import Sender, sender
from .worker.spec import TrialSpec

MLFLOW_END_WAIT_S = float(os.environ.get("GROUNDING_MLFLOW_END_WAIT_S", "120"))
QUIET_HOOK = "orchestration.worker.setup.quiet_workers"  # Ray imports it in every worker process


def storage_path(cfg, cwd: Path) -> str:
    """Ray's storage (checkpoints, Train runs, the sweep's state): ``storage_path=`` or ./ray_results."""
    return absolute_uri(cfg["storage_path"] or str(cwd / "ray_results"))


def trial_spec(cfg, ds, *, name: str, storage: str, method: str, epochs: int, seed: int,
               fixed: dict[str, Any], metric: str) -> TrialSpec:
    """What every trial of this run is told, from the parsed command line ``cfg`` (the sweep's
    keys) and the opened dataset ``ds``; ``metric`` without the ``val/`` prefix."""
    return TrialSpec(
        sweep=name, method=method, task=cfg.task, data_root=ds.root, data_digest=ds.digest,
        cache_dir=cfg["data.cache_dir"], cache_max_bytes=int(cfg["data.cache_max_gb"] * 2**30),
        mapped=cfg["data.mapped"], epochs=epochs, seed=seed, fixed=dict(fixed), metric=metric, workers=cfg["workers"],
        use_trainer=cfg["workers"] > 1 or cfg["trainer"] == "always",
        cpus_per_worker=cfg["cpus_per_worker"], gpus_per_worker=cfg["gpus_per_worker"],
        threads=max(1, int(cfg["cpus_per_worker"])), amp=cfg["amp"],
        placement="SPREAD" if cfg["workers"] > 1 else "PACK", eval_batch_size=cfg["eval_batch_size"],
        storage_path=storage, checkpoints_keep=cfg["checkpoints.keep"], failures=cfg["failures"],
        converge_patience=cfg["converge.patience"], converge_min_delta=cfg["converge.min_delta"])


class Interrupt:
    """SIGINT/SIGTERM end a run cleanly: the first one asks Tune to stop its trials and save the
    experiment state (Tune's own graceful stop, the one it binds to SIGUSR1), the driver then
    shuts Ray down, marks the parent run KILLED and prints the summary so far; a second one stops
    at once. Before Tune runs, a signal stops the run straight away."""

    def __init__(self, log: Callable[[str], None]):
        self.signum: int | None = None
        self.in_fit = False
        self._log = log
        self._previous: dict = {}

    def install(self) -> None:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # this handler calls Tune's graceful stop itself
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        name = signal.Signals(signum).name
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self.in_fit and callable(tune_stop):
            self._log(f"{name}: stopping the trials and saving the state (send it again to stop at once)")
            tune_stop(signal.SIGUSR1, frame)
            return
        self._log(f"{name}: stopping now")
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


class _DropNotice:
    """Drops Ray's "token authentication is enabled (by default)" notice: a user cannot act on it."""

    def filter(self, record) -> bool:
        return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def start_ray(address: str | None, verbose: int) -> None:
    """``ray.init`` with Ray's own warnings only. ``verbose=0``: Tune's legacy reporter (which
    prints nothing at verbosity 0, where the new one prints a header box) and quiet workers, so
    :class:`~orchestration.callbacks.ProgressLines` is the console; 1-3: Tune's status tables."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DropNotice())
    kwargs: dict = {}
    if verbose == 0:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        kwargs["runtime_env"] = {"worker_process_setup_hook": QUIET_HOOK}
    ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING", **kwargs)


def local_summary(name: str, metric: str, results) -> str:
    """The summary when the tracking server cannot be read: what Tune itself knows."""
    lines = [f"{name}: MLflow unreachable at the end; the trials as Tune reports them", ""]
    for r in results or []:
        m = r.metrics or {}
        lines.append(f"  {m.get('trial_id', '?')}  epochs {m.get('epoch', '-')}  {metric} {m.get(metric, '-')}"
                     f"{'  ERROR' if r.error else ''}")
    return "\n".join(lines)


class Driver:
    """One run on the driver. Use in this order: :meth:`start` (Ray), :meth:`open_parent`,
    :meth:`open_sender`, :meth:`callbacks`, :meth:`shared`, :meth:`fit`, and always :meth:`close`
    (in a ``finally``). ``cfg`` is the parsed sweep configuration whose deployment keys apply
    (``ray.address``, ``workers``, ``*_per_worker``, ``mlflow.experiment``)."""

    def __init__(self, cfg, uri: str, *, prefix: str, verbose: int):
        self.cfg, self.tracking_uri, self.prefix, self.verbose = cfg, uri, prefix, verbose
        self.interrupt = Interrupt(self.log)
        self.client: MlflowClient | None = None
        self.exp_id = ""
        self.parent: str | None = None
        self.sender: Sender | None = None
        self.logger: MlflowTrialLogger | None = None

    def log(self, msg: str) -> None:
        print(f"[{self.prefix}] {scrub(msg)}", flush=True)

    # --------------------------------------------------------------------------------- start
    def start(self) -> int | None:
        """Start or join Ray and refuse a trial a local Ray could never place (exit 2); returns the
        exit code when a signal came first, else None."""
        scrub_output()  # every line the driver prints, Ray's forwarded worker logs included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a URL per run, with user:password@
        # the tracking server's own retries would hold the driver for minutes; the sender retries instead
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.interrupt.install()
        address = self.cfg["ray.address"] or None
        try:
            t0 = time.time()
            start_ray(address, self.verbose)
        except KeyboardInterrupt:
            ray.shutdown()
            self.interrupt.restore()
            return self.interrupt.exit_code
        self.interrupt.install()  # again: ray.init installs native SIGTERM handlers that dump stacks and exit
        have = ray.cluster_resources()
        self.log(f"ray {'joined ' + address if address else 'started locally'} in {time.time() - t0:.1f}s: "
                 f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs")
        if not address:  # a local Ray cannot grow: refuse a trial that can never be placed
            self._refuse_unplaceable(have)
        return None

    def _refuse_unplaceable(self, have: dict) -> None:
        cfg = self.cfg
        need = {"CPU": cfg["workers"] * cfg["cpus_per_worker"], "GPU": cfg["workers"] * cfg["gpus_per_worker"]}
        for res, amount in need.items():
            if amount > have.get(res, 0) + 1e-9:
                ray.shutdown()
                self.interrupt.restore()
                fail(f"one trial needs {amount:g} {res} (workers x {res.lower()}s_per_worker) but the local Ray "
                     f"has {have.get(res, 0):g}; allowed: at most {have.get(res, 0):g}")

    # ------------------------------------------------------------------------------- records
    def open_parent(self, name: str, ds, tags: dict[str, str], params: dict[str, Any],
                    parent_run_id: str | None = None) -> str:
        """Create (or reopen, on resume) the parent run; the experiment is marked as training."""
        self.client = MlflowClient(self.tracking_uri)
        experiment = self.cfg["mlflow.experiment"]
        self.exp_id = runs.experiment_id(self.client, experiment)
        self.parent = runs.start_parent(self.client, experiment, name,
                                        tags={"git_commit": runs.git_commit(), "data_manifest_sha256": ds.digest,
                                              "data_root": ds.root, **tags},
                                        params=params, parent_run_id=parent_run_id)
        lineage.mark_training_experiment(self.client, self.exp_id)
        if parent_run_id is None:
            lineage.log_dataset(self.client, self.parent, ds)
        self.log(f"MLflow parent run {self.parent} in experiment '{experiment}' at {self.tracking_uri}")
        return self.parent

    def open_sender(self, epochs: int, pending_path: str | None = None) -> Sender:
        self.sender = sender(self.tracking_uri, self.exp_id, self.parent, epochs, pending_path)
        return self.sender

    def callbacks(self, spec: TrialSpec, children: Children, ds, *, total: int, label=None) -> list:
        """The trial logger (one child run per trial), the final test and the progress lines."""
        assert self.sender is not None, "open_sender first"
        self.logger = MlflowTrialLogger(self.tracking_uri, self.exp_id, self.parent, self.sender.epochs,
                                        children, pending_path=self.sender.pending_path)
        self.logger.dataset_input = lineage.dataset_input(ds)
        progress = ProgressLines(f"val/{spec.metric}", total, label=label, prefix=f"[{self.prefix}]")
        return [self.logger, FinalTest(spec, self.logger), progress]

    def shared(self, spec: TrialSpec, searched: set[str], exp_path: str) -> dict[str, dict]:
        """Every stage the run's trials share, built once (:mod:`orchestration.shared_stages`)."""
        return ensure_shared(spec, searched, exp_path, self.client, self.exp_id, self.parent, log=self.log)

    # ----------------------------------------------------------------------------------- fit
    def fit(self, tuner, spec: TrialSpec):
        """``tuner.fit()`` under the signal handler; then every ended trial not yet tested is (after
        the records queued so far are written: :func:`catch_up` reads ``test_evaluated``)."""
        self.interrupt.in_fit = True
        try:
            results = tuner.fit()
        finally:
            self.interrupt.in_fit = False
        try:
            if not self.sender.drain(MLFLOW_END_WAIT_S):
                raise ConnectionError("MLflow unreachable")
            catch_up(results, spec, self.logger, self.client, log=self.log)
        except Exception as e:  # noqa: BLE001 - MLflow away at the end: resume= evaluates them
            self.log(f"test evaluation of interrupted trials deferred to resume= ({type(e).__name__})")
        return results

    @property
    def interrupted(self) -> bool:
        return self.interrupt.signum is not None

    # --------------------------------------------------------------------------------- close
    def close(self, name: str, metric: str, results, closing: Callable[[str], str]) -> None:
        """Shut Ray down (no trial runs on while the records are written), write the sender's last
        records, then ``closing(note)`` (the summary text, with the sender's ``note`` on an outage,
        written to the parent and ending it) and print it; when the tracking server cannot take
        them, what Tune knows is printed instead."""
        try:
            ray.shutdown()
        except KeyboardInterrupt:
            pass
        try:
            if self.parent is None:
                return
            text = self._closing_text(name, metric, results, closing)
            print("\n" + scrub(text), flush=True)
        finally:
            self.interrupt.restore()

    def _closing_text(self, name: str, metric: str, results, closing: Callable[[str], str]) -> str:
        try:
            sent = self.sender.close(MLFLOW_END_WAIT_S) if self.sender is not None else True
        except KeyboardInterrupt:  # a signal while waiting for the tracking server: keep the rest for resume=
            self.sender.spill()
            sent = False
        note = self.sender.report() if self.sender is not None else ""
        if not sent:
            return local_summary(name, metric, results) + "\n\n" + note
        try:
            return closing(note)
        except Exception as e:  # noqa: BLE001 - the server went away at the very end
            return (local_summary(name, metric, results) + f"\n\nMLflow failed while {name} was being closed "
                    f"({type(e).__name__}); python -m orchestration.sweep resume={name} closes a sweep")
