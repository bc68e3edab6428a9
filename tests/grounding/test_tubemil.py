"""tubemil: segment selection by hand, prediction contract, the masked InfoNCE."""

import math

import numpy as np
import pytest
import torch

from grounding import engine, tasks
from grounding.data.benchmarks import vidstg
from grounding.data.shards import Dataset
from grounding.models import registry
from grounding.models.tubemil import best_segment


def test_best_segment_by_hand():
    z = torch.tensor([[0.0, 0.0, 5.0, 5.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    valid = torch.ones(2, 6, dtype=torch.bool)
    assert best_segment(z, valid, 0.5).tolist() == [[2, 4], [0, 1]]  # half-open
    # padding never joins: the peak is on the last valid frame
    z = torch.tensor([[0.0, 0.0, 0.0, 4.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, True, True, False, False]])
    assert best_segment(z, valid, 0.5).tolist() == [[3, 4]]
    # a flat score gives one frame (nothing exceeds the threshold)
    s = best_segment(torch.zeros(1, 5), torch.ones(1, 5, dtype=torch.bool), 0.5)
    assert int(s[0, 1] - s[0, 0]) == 1


@pytest.fixture(scope="module")
def td(tmp_path_factory):
    root = tmp_path_factory.mktemp("tm") / "ds"
    vidstg.generate(root, vidstg.VidSTGConfig(limit=16, T=8, N=6, Df=8, Dr=8), workers=1)
    return tasks.load(Dataset.open(root))


@pytest.mark.parametrize("boxes", ["frame", "tube"])
def test_predict_contract_and_training_step(td, boxes):
    torch.manual_seed(0)
    model = registry.build("tubemil", {"embed_dim": 16, "boxes": boxes}, td.info)
    b = td["train"].batch(np.arange(8))
    loss, logs = model(b)
    assert torch.isfinite(loss) and set(logs) == {"loss_box", "loss_time"}
    loss.backward()
    model.eval()
    p = model.predict(b)
    assert p["segment"].shape == (8, 2) and p["proposal"].shape == (8, 8)
    assert (p["segment"][:, 0] < p["segment"][:, 1]).all() and (p["segment"][:, 1] <= 8).all()
    assert ((0 <= p["proposal"]) & (p["proposal"] < 6)).all()
    if boxes == "tube":  # the proposal path is one of the linked tubes
        tubes = b["tubes"]
        assert all(any(torch.equal(p["proposal"][i], tubes[i, m]) for m in range(6)) for i in range(8))
    m = engine.evaluate(model, td["val"], td.task, td.info, batch_size=4)
    assert set(m) == set(td.task.metric_names) and 0 <= m["m_viou"] <= 1


def test_own_video_is_not_a_negative(td):
    model = registry.build("tubemil", {"embed_dim": 16}, td.info)
    p = torch.tensor([[1.0, 5.0, 0.0], [5.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    masked = model._nce(p, same)
    # rows 0 and 1 compete only with video 2 (score 0) once their sibling is masked:
    # CE = log(1 + exp(-1/tau)); row 2 sees two zeros: log(1 + 2 exp(-1/tau)); the matrix is symmetric
    e = math.exp(-1 / model.cfg.tau)
    assert float(masked) == pytest.approx((2 * math.log1p(e) + math.log1p(2 * e)) / 3, rel=1e-3)
    unmasked = model._nce(p, torch.eye(3, dtype=torch.bool))
    assert float(unmasked) > 1.0  # with the sibling as a negative (score 5 > 1) the loss is large
    with pytest.raises(ValueError, match="allowed: frame, tube"):
        registry.make_config("tubemil", {"boxes": "oracle"})
