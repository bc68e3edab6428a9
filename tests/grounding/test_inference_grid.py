"""Inference-only knobs (grounding.inference_grid) on vcma's beta, through the recipe predictor."""

import numpy as np
import pytest
import torch

from grounding import engine, inference_grid, tasks, training
from grounding.data.benchmarks import vidstg
from grounding.data.shards import Dataset
from grounding.models import registry
from grounding.models.vcma import BETA_GRID

PARAMS = {"hidden_dim": 16, "heads": 2, "enc_blocks": 1, "lang_layers": 1, "xattn_layers": 1, "dec_blocks": 1}


@pytest.fixture(scope="module")
def td(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid") / "ds"
    vidstg.generate(root, vidstg.VidSTGConfig(limit=16, T=8, N=6, Df=8, Dr=8), workers=1)
    return tasks.load(Dataset.open(root))


def _build(td, **kw):
    torch.manual_seed(0)
    return registry.build("vcma", {**PARAMS, **kw}, td.info).eval()


def _same_weights(td, src, **kw):
    m = _build(td, **kw)
    m.load_state_dict(src.state_dict())
    return m.eval()


def test_declared_knobs_and_trained_values(td):
    m = _build(td, beta=0.3)
    pred = training.Predictor({"vcma": m})
    assert inference_grid.knobs(pred) == {"beta": BETA_GRID} and len(BETA_GRID) == 11
    assert BETA_GRID[0] == 0.0 and BETA_GRID[-1] == 1.0 and 0.3 in BETA_GRID
    assert inference_grid.current(pred) == {"beta": 0.3}
    for networks in ("q_only", "p_only"):  # beta is forced there: nothing to sweep
        assert inference_grid.knobs(_build(td, networks=networks)) == {}
    assert inference_grid.knobs(registry.build("tubemil", {"embed_dim": 8}, td.info)) == {}


def test_with_inference_changes_decoding_and_restores(td):
    m = _build(td, beta=0.3)
    pred = training.Predictor({"vcma": m})
    b = td["val"].batch(np.arange(8))
    ref = {beta: _same_weights(td, m, beta=beta).predict(b) for beta in (0.0, 1.0)}
    for beta in (0.0, 1.0):
        with inference_grid.with_inference(pred, beta=beta):
            assert m.cfg.beta == beta
            got = pred.predict(b)
        for k in ("segment", "proposal", "temporal"):
            torch.testing.assert_close(got[k], ref[beta][k])
    assert m.cfg.beta == 0.3  # restored
    assert not torch.allclose(ref[0.0]["temporal"], ref[1.0]["temporal"])  # the knob changes decoding
    with pytest.raises(ValueError, match="beta"):
        with inference_grid.with_inference(pred, beta=1.5):
            pass
    assert m.cfg.beta == 0.3
    with pytest.raises(ValueError, match="not inference-only knobs"):
        with inference_grid.with_inference(pred, hidden_dim=8):
            pass


def test_evaluate_grid_rows_equal_models_built_at_each_beta(td):
    m = _build(td, beta=0.3)
    pred = training.Predictor({"vcma": m})
    rows = inference_grid.evaluate_grid(pred, td["val"], td.task, td.info, batch_size=4)
    assert [r["beta"] for r in rows] == list(BETA_GRID)
    assert all(set(r) == {"beta", *td.task.metric_names} for r in rows)
    for beta in (0.0, 0.3, 1.0):
        expect = engine.evaluate(_same_weights(td, m, beta=beta), td["val"], td.task, td.info, batch_size=4)
        (row,) = [r for r in rows if r["beta"] == beta]
        assert {k: row[k] for k in expect} == pytest.approx(expect)
    assert m.cfg.beta == 0.3
    small = inference_grid.evaluate_grid(pred, td["val"], td.task, td.info, 4, grid={"beta": (0.0, 1.0)})
    assert [r["beta"] for r in small] == [0.0, 1.0] and small[0] == rows[0] and small[1] == rows[-1]
    assert inference_grid.evaluate_grid(_build(td, networks="q_only"), td["val"], td.task, td.info) == []
