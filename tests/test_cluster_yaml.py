"""cluster.yaml, validated offline with Ray's own config preparation and schema (no credentials,
no network), and checked against what the project expects of it."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestration.cli.sweep_args import KEY_INDEX

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cluster():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    gpu_types = [n for n, t in prepared["available_node_types"].items() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_types and all(prepared["available_node_types"][n]["min_workers"] == 0 for n in gpu_types)
    assert all(prepared["available_node_types"][n]["max_workers"] > 0 for n in gpu_types)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.__setitem__("head_node_typ", c.pop("head_node_type")),
        lambda c: c["available_node_types"]["gpu_1x"].__setitem__("max_worker", c["available_node_types"]["gpu_1x"].pop("max_workers")),
        lambda c: c.__setitem__("setup_comands", c.pop("setup_commands")),
        lambda c: c["provider"].pop("type"),
        lambda c: c.__setitem__("head_node_type", "no_such_type"),
        lambda c: c.__setitem__("max_workers", "eight"),
    ],
    ids=["head_node_typ", "max_worker", "setup_comands", "no provider type", "undefined head type", "wrong type"],
)
def test_a_broken_cluster_yaml_is_rejected(cluster, mutate):
    mutate(cluster)
    with pytest.raises(Exception):
        validate_config(prepare_config(cluster))


def test_commands_are_valid_bash(cluster):
    for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in cluster[key]:
            proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert proc.returncode == 0, (key, cmd, proc.stderr)


def test_setup_installs_this_project_and_exports_the_sweep_settings(cluster):
    setup = "\n".join(cluster["setup_commands"])
    assert "./setup.sh" in setup and (REPO / "setup.sh").exists()
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in setup
    for key in ("data.root", "storage_path", "mlflow.tracking_uri"):
        assert f"export {KEY_INDEX[key].env}=" in setup, key  # the env vars the CLI reads
    head = "\n".join(cluster["head_start_ray_commands"])
    assert "mlflow server" in head and "--backend-store-uri sqlite:///" in head and "--artifacts-destination $GROUNDING_S3" in head
    assert "ray start --head" in head


def test_file_mounts_point_at_real_folders(cluster):
    for remote, local in cluster["file_mounts"].items():
        assert (REPO / local).resolve().is_dir(), local


def test_nodes_need_only_the_checkout(cluster):
    """The annotation files ship in the package: nothing outside the checkout is mounted or named."""
    assert list(cluster["file_mounts"].values()) == ["."]
    text = (REPO / "cluster.yaml").read_text()
    assert "GROUNDING_ANNOTATIONS" not in text and "../" not in text


def test_dashboard_and_mlflow_listen_on_loopback_only(cluster):
    """Issue 26: nothing exposed by default; reached through `ray dashboard` / `ray attach -p 5000`."""
    head = "\n".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "mlflow server" in head and "--host 127.0.0.1" in head
    assert "0.0.0.0" not in head  # the authenticated variant is a comment in cluster.yaml, not on
    assert "--app-name basic-auth" in (REPO / "cluster.yaml").read_text()
