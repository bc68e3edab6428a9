"""The sweep's command line: parsing, validation, help. No Ray is started here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestration.cli.keys import ConfigError, absolute_uri
from orchestration.cli.sweep_args import KEYS, help_text, parse

from _sweeps import sweep_env


def test_defaults_are_the_embedded_sweep():
    cfg = parse([])
    assert cfg.method == "causal" and cfg.task == "wsvog" and cfg.benchmark == "youcook2"
    assert cfg["trials"] == 8 and cfg["epochs"] == 4 and cfg["concurrent"] == 2
    assert cfg["workers"] == 1 and cfg["scheduler"] == "asha" and cfg["search.algo"] == "tpe"
    assert cfg.model == {} and cfg.optim == {}


def test_types_follow_the_declared_keys():
    cfg = parse(["trials=3", "cpus_per_worker=1", "gpus_per_worker=0.5", "name=2024", "smoke=true",
                 "data.root=s3://bucket/prefix/yc2", "model.bda=false", "model.B_r=4", "optim.lr=0.003"])
    assert cfg["trials"] == 3
    assert cfg["cpus_per_worker"] == 1.0 and isinstance(cfg["cpus_per_worker"], float)
    assert cfg["gpus_per_worker"] == 0.5
    assert cfg["name"] == "2024"  # Hydra reads 2024 as an int; the key is a string
    assert cfg["data.root"] == "s3://bucket/prefix/yc2"
    assert cfg.model == {"bda": False, "B_r": 4} and cfg.optim == {"lr": 0.003}


def test_smoke_shrinks_only_what_is_not_given():
    assert (parse(["smoke=true"])["trials"], parse(["smoke=true"])["epochs"]) == (2, 2)
    assert parse(["smoke=true"])["scheduler"] == "fifo"
    cfg = parse(["smoke=true", "trials=3", "scheduler=asha"])
    assert cfg["trials"] == 3 and cfg["scheduler"] == "asha" and cfg["epochs"] == 2


def test_environment_supplies_deployment_defaults(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000")
    monkeypatch.setenv("GROUNDING_DATA_ROOT", "s3://lab/yc2")
    cfg = parse([])
    assert cfg["mlflow.tracking_uri"] == "http://10.0.0.1:5000" and cfg["data.root"] == "s3://lab/yc2"
    assert parse(["data.root=/data/x"])["data.root"] == "/data/x"  # the command line wins


@pytest.mark.parametrize(
    "args, message",
    [
        (["method=foo"], "error: method='foo' is unknown; allowed: stvg, causal"),
        (["trails=3"], "error: unknown key 'trails'; allowed: method, name, trials,"),
        (["trials=abc"], "error: trials='abc' has the wrong type; expected an integer"),
        (["trials=0"], "error: trials=0 is out of range; allowed: >= 1"),
        (["cpus_per_worker=0"], "error: cpus_per_worker=0.0 is out of range; allowed: > 0"),
        (["scheduler=hyperband"], "error: scheduler='hyperband' is out of range; allowed: asha, fifo"),
        (["model.J=-1"], "error: model.J=-1 is out of range; allowed: [1, inf]"),
        (["method=stvg", "model.J=5"], "error: stvg has no model hyperparameter 'J'; allowed: embed_dim, heads"),
        (["model.bda=maybe"], "error: model.bda='maybe' has the wrong type; expected true or false"),
        (["optim.batch_size=1"], "error: optim.batch_size=1 is out of range; allowed: >= 2"),
        (["search.metric=recall"], "error: search.metric='recall' is unknown for wsvog; allowed: box_macro"),
        (["epochs=2", "asha.grace_period=3"], "error: asha.grace_period=3 is out of range; allowed: <= epochs (2)"),
        (["trials"], "error: 'trials' is not an override; write key=value"),
        (["trials=1", "trials=2"], "error: trials is given twice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(sweep, args, message):
    code, lines, _ = sweep(*args)  # the fixture also checks: no Ray, nothing written
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(message), lines[0]


def test_validation_happens_before_ray_or_mlflow_are_imported(tmp_path):
    code = ("import sys\nfrom orchestration.sweep import main\n"
            "try:\n    main(['trials=0'])\nexcept SystemExit as e:\n    assert e.code == 2\n"
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('ray', 'mlflow')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=sweep_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_every_key_with_its_default(capsys):
    from orchestration.sweep import main

    assert main(["--help"]) == 0
    stdout = capsys.readouterr().out
    for k in KEYS:
        line = next((ln for ln in stdout.splitlines() if ln.strip().startswith(k.name + " ")), None)
        assert line is not None, f"{k.name} missing from --help"
        shown = repr(k.default) if isinstance(k.default, str) else str(k.default).lower() if isinstance(k.default, bool) else str(k.default)
        assert shown in line, (k.name, line)
    assert "model.<name>" in stdout and "optim.<name>" in stdout


def test_method_help_lists_hyperparameters_with_defaults_and_ranges():
    text = help_text("causal")
    for name, default in (("J", "100"), ("W", "1000"), ("B_r", "10"), ("B_f", "1"), ("eta", "0.2"), ("alpha", "0.9")):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"model.{name} "))
        assert default in line, line
    assert "Int(1, 10" in next(ln for ln in text.splitlines() if ln.strip().startswith("model.B_r "))


def test_help_names_the_validation_metric_in_effect_for_the_method():
    from orchestration.cli import compare_args as compare

    def metric_line(text):
        return next(ln for ln in text.splitlines() if ln.strip().startswith("search.metric "))

    assert "default: m_viou for winner" in metric_line(help_text("winner"))
    assert "default: r1_iou50 for ccr" in metric_line(help_text("ccr"))
    assert "default: box_micro for causal" in metric_line(help_text("causal"))
    line = metric_line(compare.help_text(["methods=vcma,cpl", "--help"]))
    assert "m_viou for vcma" in line and "r1_iou50 for cpl" in line and "box_micro" not in line
    assert "m_viou for tubes" in metric_line(help_text()) and "r1_iou50 for moments" in metric_line(compare.help_text())


def test_absolute_uri_makes_local_stores_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri("runs") == str(tmp_path / "runs")
    assert absolute_uri("s3://b/p") == "s3://b/p" and absolute_uri("http://h:5000") == "http://h:5000"


def test_parse_raises_config_error_in_process():
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        parse(["x=1"])
