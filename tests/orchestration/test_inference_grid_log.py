"""The inference-grid record on a real MLflow store: table and PNG, and a resent record changes nothing."""

import json

from mlflow.tracking import MlflowClient

from orchestration.final_test import log_result


def test_log_result_writes_grid_table_and_figure_once(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("grid", artifact_location=str(tmp_path / "art"))).info.run_id
    rows = [{"beta": b / 10, "m_viou": 0.1 + b / 100, "m_viou_declarative": 0.2} for b in range(11)]
    result = {"selected_epoch": 2, "test_iid/m_viou": 0.2, "time/inference_grid_s": 0.5,
              "inference_grid": {"split": "val", "metric": "m_viou", "rows": rows, "trained": {"beta": 0.3},
                                 "selected": 0.13}}
    for _ in range(2):  # a record sent twice (its first answer lost)
        log_result(client, run_id, result)
    files = {a.path for a in client.list_artifacts(run_id, "inference_grid")}
    assert files == {"inference_grid/beta.json", "inference_grid/beta.png"}
    table = json.load(open(client.download_artifacts(run_id, "inference_grid/beta.json", str(tmp_path))))
    assert table["columns"] == ["beta", "m_viou", "m_viou_declarative"]
    assert [r[0] for r in table["data"]] == [b / 10 for b in range(11)]  # not appended twice
    run = client.get_run(run_id)
    assert run.data.tags["test_evaluated"] == "true" and run.data.metrics["time/inference_grid_s"] == 0.5
