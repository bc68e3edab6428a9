"""``python -m grounding.data``: exit codes, one-line errors, nothing half-written, s3:// roots."""

from __future__ import annotations

import json
import shutil
from typing import Optional

import pytest

from grounding.data.cli import UsageError, parse_overrides
from grounding.data.shards import Dataset

from _data_helpers import cli, cli_process, new_bucket


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "yc2"
    # without the text encoder (tested in test_text_features.py): the transformers import alone can
    # exceed this file's subprocess timeout on a loaded 2-core machine
    r = cli("generate", "youcook2", str(root), "--set", "limit=6", "--set", "D=8", "--set", "heldout_classes=3",
            "--workers", "1", "--text-encoder", "none")
    assert r.returncode == 0, r.stderr
    return root, r


def test_generate_writes_a_dataset_with_the_overrides(generated):
    root, r = generated
    m = Dataset.open(root).manifest
    assert m.producer["name"] == "grounding.data.youcook2"
    assert (m.producer["args"]["limit"], m.producer["args"]["D"], m.producer["args"]["heldout_classes"]) == (6, 8, 3)
    assert m.dims == {"T": 5, "N": 20, "D": 8}
    assert all(m.split_rows(sp) == 6 for sp in m.splits)
    assert f"generated youcook2 at {root}" in r.stdout and "train" in r.stdout


@pytest.mark.parametrize("args, needles", [
    (["generate", "nope", "{root}"], ["unknown benchmark 'nope'", "allowed: youcook2"]),
    (["generate", "youcook2", "{root}", "--set", "bogus=1"], ["--set bogus", "allowed: seed, T, N, D"]),
    (["generate", "youcook2", "{root}", "--set", "T=five"], ["--set T=five", "expects an int"]),
    (["generate", "youcook2", "{root}", "--set", "class_noise=lots"], ["expects a float"]),
    (["generate", "youcook2", "{root}", "--set", "limit"], ["is not key=value"]),
    (["generate", "youcook2", "{root}", "--set", "N=3"], ["N must hold"]),
    (["generate", "youcook2", "s3://bucket/x"], ["writes a local folder", "publish"]),
    (["convert", "nope", "{root}"], ["invalid choice: 'nope'", "youcook2-bb"]),
    (["convert", "charades-sta", "--annotations", "/no/such/dir", "--features", "/no/f.h5", "{root}"],
     ["--annotations /no/such/dir does not exist"]),
    (["convert", "youcook2-bb", "--annotations", "/no/such", "--features", ".", "--proposals", ".", "{root}"],
     ["--annotations /no/such does not exist"]),
    (["verify"], ["the following arguments are required: ROOT"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needles):
    root = tmp_path / "out"
    r = cli(*[a.format(root=root) for a in args])
    _one_line_error(r, *needles)
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_an_existing_root_needs_overwrite(generated, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(generated[0], root)
    _one_line_error(cli("generate", "youcook2", str(root), "--smoke"), "exists; pass --overwrite")
    assert Dataset.open(root).digest == Dataset.open(generated[0]).digest


def test_the_real_entry_point_answers_and_fails_in_one_line(tmp_path):
    """``python -m grounding.data`` as a user runs it (the other tests call its main in process)."""
    assert "usage:" in cli_process("--help").stdout
    _one_line_error(cli_process("generate", "nope", str(tmp_path / "x")), "unknown benchmark 'nope'")
    assert list(tmp_path.iterdir()) == []


def test_help_of_every_command():
    for args in (["--help"], ["generate", "--help"], ["publish", "--help"], ["verify", "--help"],
                 ["describe", "--help"], ["convert", "--help"], ["convert", "vidstg", "--help"]):
        r = cli(*args)
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    assert "--cache-max-gb" in cli("verify", "--help").stdout


def test_verify_lists_every_problem_and_exits_1(generated, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(generated[0], root)
    (root / "train" / "part-00000.parquet").unlink()
    p = root / "val" / "part-00000.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    r = cli("verify", str(root), "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 1
    fails = [line for line in r.stderr.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2
    assert f"shard {root}/train/part-00000.parquet is missing" in fails[0]
    assert f"shard {root}/val/part-00000.parquet has" in fails[1] and "truncated" in fails[1]
    assert "2 problem(s)" in r.stderr
    assert cli("verify", str(tmp_path / "nothing")).returncode == 1


def test_publish_then_verify_and_describe_the_s3_url(s3_server, generated, tmp_path):
    root = generated[0]
    url = f"s3://{new_bucket(s3_server)}/yc2"
    r = cli("publish", str(root), url)
    assert r.returncode == 0, r.stderr
    assert f"-> {url}" in r.stdout
    r = cli("verify", url, "--cache-dir", str(tmp_path / "c"), "--cache-max-gb", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ok {url}: 5 file(s) match the manifest")
    assert len(list((tmp_path / "c" / "objects").glob("*.parquet"))) == 5  # --cache-dir is where it fetched
    r = cli("describe", url)
    assert r.returncode == 0 and f"dataset   {url}" in r.stdout and "test_ood" in r.stdout
    d = json.loads(cli("describe", url, "--json").stdout)
    assert d["digest"] == Dataset.open(root).digest and d["root"] == url
    _one_line_error(cli("publish", str(root), url), "already holds a dataset")
    _one_line_error(cli("publish", str(root), str(tmp_path / "local-copy"), "--endpoint-url", s3_server),
                    "--endpoint-url applies to s3:// URLs")
    # --endpoint-url instead of the environment variable
    r = cli("describe", url, "--endpoint-url", s3_server, env={"AWS_ENDPOINT_URL_S3": ""})
    assert r.returncode == 0, r.stderr


def test_verify_names_a_corrupt_remote_shard(s3_server, generated, tmp_path):
    from _data_helpers import s3fs_for

    url = f"s3://{new_bucket(s3_server)}/yc2"
    assert cli("publish", str(generated[0]), url).returncode == 0
    fs = s3fs_for(s3_server)
    key = f"{url[5:]}/test_iid/part-00000.parquet"
    data = fs.cat_file(key)
    fs.pipe_file(key, data[:10] + bytes([data[10] ^ 1]) + data[11:])
    r = cli("verify", url, "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 1
    assert f"FAIL shard {url}/test_iid/part-00000.parquet fails its checksum" in r.stderr
    assert not list((tmp_path / "c" / "objects").glob(".*.tmp"))


def test_set_values_are_converted_by_field_type():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        n: int = 1
        x: float = 0.5
        flag: bool = False
        name: str = "a"
        limit: Optional[int] = None
        sizes: tuple[int, ...] = (1, 2)

    got = parse_overrides(["n=3", "x=1e-3", "flag=true", "name=b=c", "limit=none", "sizes=4,5"], Cfg, "t")
    assert got == {"n": 3, "x": 0.001, "flag": True, "name": "b=c", "limit": None, "sizes": (4, 5)}
    assert parse_overrides(["limit=7", "sizes=[6]"], Cfg, "t") == {"limit": 7, "sizes": (6,)}
    for bad in ("n=1.5", "flag=maybe", "limit=x", "sizes=1,b"):
        with pytest.raises(UsageError):
            parse_overrides([bad], Cfg, "t")
