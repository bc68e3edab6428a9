"""Issue 26, careless and hostile input: names that would escape storage_path, stores that cannot
be written, a file-store tracking URI, and a fuzzed command line. Everything runs in this process
with ``ray.init`` a tripwire (seconds, no Ray)."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from _sweeps import names as _names
from orchestration import preflight as pre
from orchestration.cli import compare_args as compare, evaluate_args as evaluate
from orchestration.cli.sweep_args import ConfigError, parse


def _one_line(code, lines, out, *contains):
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for c in contains:
        assert c in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ names are names
BAD_NAMES = ["..", "../../tmp/evil-escape", "/tmp/abs-escape", "a/b", "a\\b", ".hidden", "a\x00b", "x" * 101,
             "a b", "~root", "$HOME", "caf\u00e9/..", ""]


def _bad(value):  # "" is the default for name/resume (allowed), an error elsewhere
    return [v for v in BAD_NAMES if v != ""]


@pytest.mark.parametrize("value", _bad(BAD_NAMES))
@pytest.mark.parametrize("key", ["name", "resume"])
def test_sweep_names_are_names(key, value):
    if key == "resume" and value.startswith("/"):
        pytest.skip("resume= takes an absolute experiment path")
    with pytest.raises(ConfigError) as e:
        parse(["method=stvg", f"{key}={value}"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", _bad(BAD_NAMES))
def test_compare_names_are_names(value):
    for arg in (f"name={value}", f"from_sweep={value}"):
        with pytest.raises(ConfigError) as e:
            compare.parse(["methods=stvg", arg])
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", _bad(BAD_NAMES))
def test_evaluate_run_is_a_name(value):
    with pytest.raises(ConfigError) as e:
        evaluate.parse([f"run={value}"])
    assert "\n" not in str(e.value)


def test_evaluate_lists_only_where_the_key_takes_one():
    """splits= and members= are comma-separated lists (as --help says); any other key takes one value."""
    run = "0123456789abcdef0123456789abcdef"
    got = evaluate.parse([f"run={run}", "splits=val,test_iid", "members=[spatial,temporal]"])
    assert got["splits"] == "val,test_iid" and got["members"] == "spatial,temporal"
    with pytest.raises(ConfigError, match=r"^run=a,b: run takes one value; allowed: a list only for splits= and members="):
        evaluate.parse(["run=a,b"])
    with pytest.raises(ConfigError, match="data.root takes one value"):
        evaluate.parse([f"run={run}", "data.root=x,y"])
    assert evaluate.parse([f"run={run}", "model.inference=context"])["model"] == {"inference": "context"}
    with pytest.raises(ConfigError, match=r"^model.x: give one value for one option name"):
        evaluate.parse([f"run={run}", "model.x=a,b"])


def test_plain_names_pass():
    assert parse(["method=stvg", "name=stvg-2026.12_a"])["name"] == "stvg-2026.12_a"
    assert parse(["method=stvg", "resume=/abs/ray_results/x"])["resume"] == "/abs/ray_results/x"


@pytest.mark.parametrize("arg", ["name=../../tmp/evil-escape", "name=/tmp/abs-escape"])
def test_escaping_name_is_one_line_before_anything(sweep, arg):
    _one_line(*sweep("method=stvg", arg, "smoke=true"), "is not a plain name", "letters, digits")
    assert not Path("/tmp/abs-escape").exists() or arg != "name=/tmp/abs-escape"


def test_compare_escaping_name_is_one_line(sweep):
    _one_line(*sweep("methods=stvg", "name=../x", module="compare"), "name=", "is not a plain name")


# ------------------------------------------------------------- every destination is checked before Ray
@pytest.mark.parametrize("uri", ["file:///nonexistent/dir/x", "/nonexistent/dir/x", "mlruns"])
def test_a_file_store_tracking_uri_is_refused(sweep, uri):
    _one_line(*sweep("method=stvg", "smoke=true", f"mlflow.tracking_uri={uri}"),
              "mlflow.tracking_uri=", "sqlite:///", "http://")


def test_an_unknown_tracking_scheme_is_refused(sweep):
    _one_line(*sweep("method=stvg", "smoke=true", "mlflow.tracking_uri=ftp://h/x"), "is not a tracking store")


def test_unwritable_storage_path_is_refused(sweep):
    _one_line(*sweep("method=stvg", "smoke=true", "storage_path=/proc/forbidden"),
              "storage_path=/proc/forbidden", "cannot write in /proc")


def test_unwritable_cache_dir_is_refused(sweep, smoke_root):
    _one_line(*sweep("method=causal", f"data.root={smoke_root}", "data.cache_dir=/proc/forbidden/cache"),
              "data.cache_dir=/proc/forbidden/cache", "cannot write")


def test_unwritable_default_data_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="the default data folder=/proc/x/data: cannot write in /proc"):
        pre.check_writable("/proc/x/data", "the default data folder")


def test_local_probe_leaves_nothing_behind(tmp_path):
    pre.check_writable(str(tmp_path / "a" / "b" / "c"), "storage_path")
    assert _names(tmp_path) == []


def test_s3_probe_writes_and_removes_an_object(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("probe-bucket")
    pre.check_writable("s3://probe-bucket/ray-results", "storage_path")
    fs.invalidate_cache()
    assert fs.find("probe-bucket") == []
    with pytest.raises(ConfigError, match="storage_path=s3://no-such-bucket-26/x: the bucket does not exist"):
        pre.check_writable("s3://no-such-bucket-26/x", "storage_path")


# ------------------------------------------------------------------------ a fuzzed command line
N_CASES = 2400  # malformed argument lists, 800 per parser (seeded: the same cases every run)

_KEYS = ["method", "name", "trials", "epochs", "concurrent", "workers", "trainer", "cpus_per_worker",
         "gpus_per_worker", "seed", "smoke", "scheduler", "asha.grace_period", "asha.reduction_factor",
         "search.algo", "search.seed", "search.metric", "search.storage", "data.root", "data.generate", "data.seed",
         "data.dim", "data.cache_dir", "data.cache_max_gb", "mlflow.tracking_uri", "mlflow.experiment",
         "storage_path", "checkpoints.keep", "failures", "eval_batch_size", "resume", "verbose", "backbone",
         "methods", "seeds", "variants", "point", "from_sweep", "run", "splits", "log", "model.heads",
         "model.embed_dim", "model.nope", "optim.lr", "optim.batch_size", "optim.nope", "nokey", "", "a.b.c",
         "model.", "optim", "\u00e9t\u00e9", "method "]
_VALUES = ["", "0", "-1", "1", "2", "3", "1e309", "-1e309", "nan", "inf", "1e-320", str(2**64), str(-2**63),
           "9" * 400, "0.5", "true", "false", "null", "[]", "[1,2]", "{a:1}", "a,b", "range(1,3)", "choice(1,2)",
           "'quoted'", '"dq"', "$(rm -rf /)", "`id`", "; ls", "a|b", "&&", "*", "?", "..", "../..", "/tmp/x",
           "~", "a\x00b", "\u202e\u0635\u00e9\U0001F600", "\t", " ", "\n", "x" * 5000, "stvg", "causal",
           "cpl", "s3://", "s3://b", "file:///x", "sqlite://", "sqlite:///", "sqlite:////proc/x/db",
           "http://", "ftp://h", "asha", "fifo", "tpe", "all", "paper", "val", "\\", "%", "=", "==", "a=b"]
_NETWORK = ("http", "https", "s3", "postgresql", "mysql", "mssql")


def _arglists(parser: str, n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        args = []
        if parser == "compare" and rng.random() < 0.8:
            args.append(f"methods={rng.choice(['stvg', 'stvg,causal', 'cpl', 'x', ''])}")
        if parser == "sweep" and rng.random() < 0.5:
            args.append(f"method={rng.choice(['stvg', 'causal', 'cpl', 'x'])}")
        for _ in range(rng.randint(0, 5)):
            kind = rng.random()
            if kind < 0.05:
                args.append("".join(rng.choice(string.printable) for _ in range(rng.randint(0, 12))))  # no '='
            elif kind < 0.1 and args:
                args.append(rng.choice(args))  # a repeated key
            else:
                value = rng.choice(_VALUES) if rng.random() < 0.85 else "".join(
                    chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 8)))
                args.append(f"{rng.choice(_KEYS)}={value}")
        if any(a.split("=", 1)[-1].split("://")[0] in _NETWORK for a in args if "://" in a):
            args = [a for a in args if "://" not in a]  # no network in a unit test
        yield args


def test_fuzzed_command_lines_parse_or_fail_in_one_line(tmp_path, monkeypatch):
    import time

    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "GROUNDING_DATA_ROOT", "GROUNDING_STORAGE_PATH",
              "GROUNDING_CACHE_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    parsers = {"sweep": parse, "compare": compare.parse, "evaluate": evaluate.parse}
    t0, cases, parsed = time.time(), 0, 0
    for i, (label, fn) in enumerate(parsers.items()):
        for args in _arglists(label, N_CASES // 3, seed=26 + i):
            cases += 1
            try:
                cfg = fn(args)
                first = cfg.first if label == "compare" else cfg
                values = first if label == "evaluate" else first.values
                # the pre-Ray checks of what the command would write to (local only here)
                pre.check_tracking(values["mlflow.tracking_uri"] or "sqlite:///" + str(tmp_path / "m.db"))
                if label != "evaluate":
                    pre.check_writable(values["storage_path"] or str(tmp_path / "ray_results"), "storage_path")
                if values["data.cache_dir"]:
                    pre.check_writable(values["data.cache_dir"], "data.cache_dir")
                parsed += 1
            except ConfigError as e:
                assert "\n" not in str(e) and str(e), (label, args, str(e))
            except Exception as e:  # noqa: BLE001 - the point of the test
                raise AssertionError(f"{label} {args!r}: {type(e).__name__}: {e}") from e
    assert cases == N_CASES and 0 < parsed < cases
    assert _names(tmp_path) == [], _names(tmp_path)
    assert time.time() - t0 < 30
