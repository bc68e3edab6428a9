"""Converters from published layouts, each on the REAL annotation files (the packaged ones) with
small feature files generated here in the published layout; and the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from grounding.data import safe_pickle
from grounding.data.converters import ConversionError
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset
from grounding.data.wsvog import WsvogArrays, fixed_list_to_numpy

h5py = pytest.importorskip("h5py")

from _data_helpers import plain_annotations  # noqa: E402

DATA = plain_annotations()
YC2 = DATA / "youcook2_bb" / "causal_repo"
QUIET = dict(log=lambda *_: None)


def _rows(ds: Dataset, split: str) -> list[dict]:
    return ds.read_split(split).to_pylist()


# ============================================================================ safe pickle
class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps({"ok": [1, 2], "evil": _Boom(marker)}, protocol=proto)
        with pytest.raises(safe_pickle.UnsafePickleError, match=r"refusing to load global (posix|os|nt)\.system"):
            safe_pickle.loads(data, allow_numpy=True, allow_counter=True)
    assert not marker.exists()
    with pytest.raises(safe_pickle.UnsafePickleError, match="numpy"):
        safe_pickle.loads(pickle.dumps(np.zeros(2)))  # numpy only when asked for
    with pytest.raises(safe_pickle.UnsafePickleError, match="objects"):
        safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object)), allow_numpy=True)
    assert safe_pickle.loads(pickle.dumps((1, 2.5, "s", b"b", None, True, {3}, [()]))) == (1, 2.5, "s", b"b", None, True, {3}, [()])


def test_restricted_unpickler_loads_the_real_pickles():
    ents = safe_pickle.load(DATA / "youcook2_bb" / "nafae" / "train_entities.pkl", encoding="latin1")
    assert len(ents) == 1333
    first = next(iter(ents.values()))
    assert set(first) == {"sentence_raw", "sentence", "noun", "category"}
    assert all(isinstance(w, str) for sent in first["sentence_raw"] for w in sent)
    glove = safe_pickle.load(DATA / "charades_sta" / "glove.pkl", allow_numpy=True, allow_counter=True)
    ref = np.load(DATA / "charades_sta" / "glove_vectors_1146x300_float32.npy")
    assert len(glove["w2id"]) == 1146 and np.allclose(np.stack(glove["id2vec"]), ref)
    with pytest.raises(safe_pickle.UnsafePickleError, match="_reconstruct"):
        safe_pickle.load(DATA / "charades_sta" / "glove.pkl")


# ============================================================================= YouCook2-BB
SPLIT_DIR = {"train": "training", "val": "validation", "test": "testing"}
BOX = np.array([22.4, 44.8, 112.0, 179.2], np.float32)  # proposal 0 of every frame, 224x224 input coordinates
VAL_VIDEO, VAL_SIZE = "DBgap0YANhs", (720, 540)


def _yc2_segments():
    lists = {sp: json.loads((YC2 / f"{sp}_dict.json").read_text()) for sp in SPLIT_DIR}
    return {sp: list(lists[sp].items())[:3] for sp in SPLIT_DIR}, lists


def _yc2_val_boxes(path: Path, lists, official: bool) -> None:
    """Box ground truth for the first two real validation segments (the val box file is not in
    packaged annotations); the third converted one has none (its instances come from the dict file)."""
    segs = {}
    for seg, (meta, classes) in list(lists["val"].items())[:2]:
        assert meta[2] == VAL_VIDEO
        objs = []
        for k, c in enumerate(classes):
            frames = [{"xtl": 10 + k, "ytl": 20, "xbr": 110, "ybr": 220, "occluded": 0, "outside": 0} for _ in range(7)]
            frames[2]["occluded"] = 1
            frames[3]["outside"] = 1
            frames[4] = {}
            frames[6] = {"xtl": 300, "ytl": 200, "xbr": 400, "ybr": 350, "occluded": 0, "outside": 0}
            objs.append({"label": NAMES[c], "boxes": frames})
        segs[str(int(meta[3]))] = objs
    if official:
        db = {VAL_VIDEO: {"rwidth": VAL_SIZE[0], "rheight": VAL_SIZE[1],
                          "segments": {k: {"objects": v} for k, v in segs.items()}}}
    else:  # the causal repo's conversion: dicts keyed by index strings, width/height
        db = {VAL_VIDEO: {"width": VAL_SIZE[0], "height": VAL_SIZE[1], "annotations": {
            k: {str(i): {"label": o["label"], "boxes": {str(j): b for j, b in enumerate(o["boxes"])}}
                for i, o in enumerate(v)} for k, v in segs.items()}}}
    path.write_text(json.dumps({"database": db}))


NAMES = [line.split(",")[1] for line in (YC2 / "class_file.csv").read_text().splitlines() if line]


@pytest.fixture(scope="module")
def yc2_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("yc2_inputs")
    plan, lists = _yc2_segments()
    for sp, items in plan.items():
        for k in ("feat", "prop"):
            (base / k / SPLIT_DIR[sp]).mkdir(parents=True)
        for i, (seg, _) in enumerate(items):
            F = 3 if (sp, i) == ("train", 2) else 7  # one segment shorter than T: frames repeat
            f = np.zeros((F, 25, 4096), np.float32)
            f[:, :, 0] = np.arange(F)[:, None]
            f[:, :, 1] = np.arange(25)[None]
            np.save(base / "feat" / SPLIT_DIR[sp] / f"{seg}.npy", f)
            p = np.random.default_rng(i).uniform(0, 224, (F, 25, 4)).astype(np.float32)
            p[:, 0] = BOX
            np.save(base / "prop" / SPLIT_DIR[sp] / f"{seg}.npy", p)
    _yc2_val_boxes(base / "yc2_bb_val_annotations.json", lists, official=True)
    _yc2_val_boxes(base / "converted_val.json", lists, official=False)
    return base, plan


YC2_SOURCES = dict(limit=3, boxes=[YC2 / "official_yc2_bb_public_test_annotations.json"],
                   sizes=[YC2 / "official_yc2_training_vid.json", YC2 / "official_yc2_bb_public_test_annotations.json"])


def _yc2_convert(base: Path, root: Path, **kw) -> Dataset:
    from grounding.data.converters import youcook2_bb

    val = base / "yc2_bb_val_annotations.json"
    youcook2_bb.convert(root, YC2, base / "feat", base / "prop", sizes=[*YC2_SOURCES["sizes"], val],
                        boxes=[*YC2_SOURCES["boxes"], val], limit=3, **QUIET, **kw)
    return Dataset.open(root)


@pytest.fixture(scope="module")
def yc2_converted(yc2_inputs, tmp_path_factory):
    """The 5-centre-frame setting (``eval_frames=centre``): the rows the converter wrote before
    evaluation rows held every frame; the assertions on it below predate that change unchanged."""
    return _yc2_convert(yc2_inputs[0], tmp_path_factory.mktemp("yc2_out") / "ds", eval_frames="centre")


@pytest.fixture(scope="module")
def yc2_every(yc2_inputs, tmp_path_factory):
    """The default: every frame of a val/test segment, in rows of T = 5 consecutive frames."""
    return _yc2_convert(yc2_inputs[0], tmp_path_factory.mktemp("yc2_every") / "ds")


def test_youcook2_bb_low_vocabulary_coverage_names_the_word_vectors(yc2_inputs, tmp_path):
    from grounding.data.converters import youcook2_bb

    base, _ = yc2_inputs
    (tmp_path / "few.json").write_text(json.dumps({"the": [0.1] * 300, "and": [0.2] * 300}))
    with pytest.raises(ConversionError, match=r"vocabulary coverage below 90% with the GloVe file \S+/few\.json: train"):
        youcook2_bb.convert(tmp_path / "ds", YC2, base / "feat", base / "prop", splits=["train"], limit=3,
                            sizes=[YC2 / "official_yc2_training_vid.json"], word_vectors=tmp_path / "few.json", **QUIET)
    assert not (tmp_path / "ds").exists()


def test_youcook2_bb_rows_shapes_and_frames(yc2_converted, yc2_inputs):
    ds, (_, plan) = yc2_converted, yc2_inputs
    ds.verify()
    m = ds.manifest
    assert (m.task, m.dims, m.feature_dtype) == ("wsvog", {"T": 5, "N": 20, "D": 4096, "D_text": 384}, "float16")
    assert {sp: m.split_rows(sp) for sp in m.splits} == {"train": 3, "val": 3, "test": 3}
    # what the box files list: 2 val (ours) + 3 test (the real public file, labels without boxes);
    # what box accuracy can score: only the 2 val segments
    assert m.extra["stats"]["segments_in_box_files"] == {"train": 0, "val": 2, "test": 3}
    assert m.extra["stats"]["segments_with_boxes"] == {"train": 0, "val": 2, "test": 0}
    assert m.producer["name"] == "grounding.data.converters.youcook2_bb" and m.producer["args"]["N"] == 20
    arr = WsvogArrays.from_table(ds.read_split("train"), 5, 20, 4096)
    assert arr.features.shape == (3, 5, 20, 4096) and arr.proposals.shape == (3, 5, 20, 4)
    assert arr.segment_ids == [s for s, _ in plan["train"]]
    # centre frames floor((t + 0.5) * F / 5): of 7 frames -> 0,2,3,4,6; of 3 frames -> 0,0,1,2,2 (repeated)
    np.testing.assert_array_equal(arr.features[0, :, 0, 0], [0, 2, 3, 4, 6])
    np.testing.assert_array_equal(arr.features[2, :, 0, 0], [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(arr.features[0, 0, :, 1], np.arange(20))  # the first 20 of 25 proposals


def test_youcook2_bb_text_features_come_with_the_conversion(yc2_converted):
    from grounding.data import text_features

    ds = yc2_converted
    m = ds.manifest
    assert m.text["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert m.text["digest"] == text_features.encoder_info("minilm")["digest"]
    assert m.text["mentions"] == sum(len(q) for sp in m.splits for q in ds.read_split(sp)["query_classes"].to_pylist())
    text_features.check_encoder(m, ds.root, "minilm", need_words=True)  # what method=scl checks
    cov = m.extra["stats"]["vocab_coverage"]  # share of sentence words with a vector, per split
    assert set(cov) == {"train", "val", "test"} and all(0.9 <= v <= 1 for v in cov.values()), cov
    arr = WsvogArrays.from_table(ds.read_split("train"), 5, 20, 4096)
    assert arr.text_query.shape[:2] == arr.queries.shape and arr.text_query.shape[2] == 384
    assert arr.text_sentence.shape == (3, 384) and np.isfinite(arr.text_sentence.astype(np.float32)).all()
    words = ds.read_table("words").sort_by("word_id")
    sent = ds.read_split("train")["sentence"].to_pylist()[0]
    vocab = dict(zip(words["word"].to_pylist(), words["word_id"].to_pylist()))
    from grounding.data import text

    assert arr.word_ids[0][arr.word_ids[0] >= 0].tolist() == [vocab.get(w, 0) for w in text.words(sent)]


def test_youcook2_bb_proposals_are_rescaled_to_the_video_size(yc2_converted):
    ds = yc2_converted
    # a33P6Woqnsk (train) is 720x405; jD4o_Lmy6bU (test) 720x540 in the official files
    train, test = _rows(ds, "train"), _rows(ds, "test")
    assert (train[0]["video_id"], train[0]["frame_width"], train[0]["frame_height"]) == ("a33P6Woqnsk", 720, 405)
    assert (test[0]["video_id"], test[0]["frame_width"], test[0]["frame_height"]) == ("jD4o_Lmy6bU", 720, 540)
    p_train = np.asarray(train[0]["proposals"]).reshape(5, 20, 4)
    p_test = np.asarray(test[0]["proposals"]).reshape(5, 20, 4)
    # 22.4*720/224 = 72, 44.8*405/224 = 81, 112*720/224 = 360, 179.2*405/224 = 324 (x by width, y by height)
    np.testing.assert_allclose(p_train[:, 0], np.tile([72.0, 81.0, 360.0, 324.0], (5, 1)), rtol=1e-6)
    np.testing.assert_allclose(p_test[:, 0], np.tile([72.0, 108.0, 360.0, 432.0], (5, 1)), rtol=1e-6)


def test_youcook2_bb_ground_truth_and_queries(yc2_converted):
    _, lists = _yc2_segments()
    train, val, test = (_rows(yc2_converted, sp) for sp in ("train", "val", "test"))
    seg, (meta, classes) = next(iter(lists["train"].items()))
    assert train[0]["segment_id"] == seg and train[0]["recipe"] == meta[1]
    assert train[0]["query_classes"] == list(dict.fromkeys(classes))
    assert train[0]["gt_class"] == classes and not any(train[0]["gt_valid"])  # training: no boxes
    sentences = json.loads((YC2 / "seg_sentence_dict.json").read_text())
    assert [r["sentence"] for r in train] == [sentences[r["segment_id"]] for r in train]
    # validation: boxes of the official-format file, at the kept frames 0,2,3,4,6
    v = val[0]
    I = len(v["gt_class"])
    valid = np.asarray(v["gt_valid"]).reshape(I, 5)
    boxes = np.asarray(v["gt_boxes"]).reshape(I, 5, 4)
    assert (v["frame_width"], v["frame_height"]) == VAL_SIZE
    np.testing.assert_array_equal(valid[0], [True, False, False, False, True])  # occluded, outside, missing
    np.testing.assert_allclose(boxes[0, 0], [10, 20, 110, 220])
    np.testing.assert_allclose(boxes[0, 4], [300, 200, 400, 350])
    assert v["gt_class"] == lists["val"][v["segment_id"]][1]
    # test: the real public test file has labels but no boxes (the test boxes are server-side)
    t = test[0]
    assert t["segment_id"] == "jD4o_Lmy6bU_00"
    assert t["gt_class"] == [45, 46, 40, 53] and t["query_classes"] == [45, 46, 40, 53]  # flour salt water dough
    assert not any(t["gt_valid"])


def _annotated(path: Path) -> tuple[int, int]:
    """(valid boxes, (segment, class, frame) items with a valid box) of an official-format box file,
    counted from the JSON alone: a box counts where present, not occluded and not outside."""
    boxes, items = 0, 0
    for v in json.loads(path.read_text())["database"].values():
        for seg in v["segments"].values():
            frames: dict[str, set] = {}
            for obj in seg["objects"]:
                ok = {j for j, b in enumerate(obj["boxes"]) if b and not b["occluded"] and not b["outside"]}
                boxes += len(ok)
                frames.setdefault(obj["label"], set()).update(ok)
            items += sum(map(len, frames.values()))
    return boxes, items


def _accumulator(ds: Dataset, split: str):
    """The task's accumulator after one batch of the whole split with fixed proposal scores."""
    import torch

    from grounding import tasks

    data = tasks.load(ds, splits=(split,), optional=())
    acc, b = data.task.accumulator(data.info), data[split].batch(np.arange(len(data[split])))
    B, Kq = b["queries"].shape
    T, N = b["proposals"].shape[1:3]
    acc.update_batch(torch.arange(N, dtype=torch.float32).expand(B, Kq, T, N), b)
    return acc


def test_youcook2_bb_evaluation_rows_hold_every_frame(yc2_every, yc2_inputs):
    """The default (eval_frames=all): a 7-frame val/test segment is two rows of 5 consecutive
    frames with its segment id, the second filled with frames 4, 5, 6 as the published test fills its
    last window, the filler not scored; training keeps the 5 centre frames."""
    _, plan = yc2_inputs
    m = yc2_every.manifest
    assert m.extra["eval_frames"] == "all" and m.producer["args"]["eval_frames"] == "all"
    assert {sp: m.split_rows(sp) for sp in m.splits} == {"train": 3, "val": 6, "test": 6}
    st = m.extra["stats"]
    assert st["segments"] == {"train": 3, "val": 3, "test": 3} and st["rows"] == {"train": 3, "val": 6, "test": 6}
    assert st["frames"] == {"train": 5 + 5 + 3, "val": 21, "test": 21}  # distinct frames held; filler not counted
    val = WsvogArrays.from_table(yc2_every.read_split("val"), 5, 20, 4096)
    assert val.segment_ids == [s for s, _ in plan["val"] for _ in range(2)]
    np.testing.assert_array_equal(val.features[:2, :, 0, 0], [[0, 1, 2, 3, 4], [5, 6, 4, 5, 6]])
    # object 0 of segment 0: frames 0, 1 valid, 2 occluded, 3 outside, 4 missing, 5 and 6 valid; filler never
    np.testing.assert_array_equal(val.gt_valid[:2, 0], [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_allclose(val.gt_boxes[1, 0, 1], [300, 200, 400, 350])
    train = WsvogArrays.from_table(yc2_every.read_split("train"), 5, 20, 4096)
    np.testing.assert_array_equal(train.features[:, :, 0, 0], [[0, 2, 3, 4, 6], [0, 2, 3, 4, 6], [0, 0, 1, 2, 2]])
    assert train.segment_ids == [s for s, _ in plan["train"]]


def test_every_annotated_frame_is_scored(yc2_every, yc2_converted, yc2_inputs):
    """As the published test: the boxes scored on the val split are exactly the valid boxes of the
    annotation (every annotated frame of every object), and the (segment, class, frame) items the
    query accuracy counts are those of the annotation; the 5-centre-frame setting scores frames
    0, 2, 3, 4, 6 of the 7, i.e. 2 of each object's 4 valid boxes."""
    boxes, items = _annotated(yc2_inputs[0] / "yc2_bb_val_annotations.json")
    assert boxes == 2 * 8 and items == 2 * 8  # 2 segments, each 2 objects of distinct classes x 4 valid frames
    acc = _accumulator(yc2_every, "val")
    assert acc.counts[1].sum() == boxes == yc2_every.manifest.extra["stats"]["gt_boxes"]["val"]
    assert acc.counts[3].sum() == items
    centre = _accumulator(yc2_converted, "val")
    assert centre.counts[1].sum() == boxes // 2 == yc2_converted.manifest.extra["stats"]["gt_boxes"]["val"]


def test_the_centre_setting_is_the_every_frame_rows_at_the_centre_frames(yc2_every, yc2_converted):
    """eval_frames=centre keeps, per segment, the 5 centre frames (0, 2, 3, 4, 6 of 7) of exactly the
    frames, proposals and ground truth that the every-frame rows hold (features, boxes, validity)."""
    from grounding.data.converters.common import centre_indices

    for sp in ("val", "test"):
        every = WsvogArrays.from_table(yc2_every.read_split(sp), 5, 20, 4096)
        centre = WsvogArrays.from_table(yc2_converted.read_split(sp), 5, 20, 4096)
        ids = np.array(every.segment_ids)
        assert centre.segment_ids == list(dict.fromkeys(every.segment_ids))
        for c, seg in enumerate(centre.segment_ids):
            r = np.flatnonzero(ids == seg)
            pick = centre_indices(7, 5)
            frames = lambda x: np.concatenate(list(x[r]), axis=0)[pick]  # noqa: E731  rows -> frames
            np.testing.assert_array_equal(frames(every.features), centre.features[c])
            np.testing.assert_array_equal(frames(every.proposals), centre.proposals[c])
            np.testing.assert_array_equal(np.concatenate(list(every.gt_valid[r]), axis=1)[:, pick], centre.gt_valid[c])
            np.testing.assert_array_equal(np.concatenate(list(every.gt_boxes[r]), axis=1)[:, pick], centre.gt_boxes[c])


@pytest.mark.parametrize("method", ["stvg", "causal", "scl"])
def test_every_wsvog_model_scores_a_segment_in_rows_as_in_one(yc2_every, method):
    """Every WSVOG model scores a frame from that frame's proposals alone, so a segment cut into
    rows of 5 frames gets the proposal scores, and so the counts, it gets in one row of all its 7
    frames."""
    import torch

    from grounding import engine, tasks
    from grounding.models import registry

    data = tasks.load(yc2_every, splits=("train", "val"), optional=())  # train: causal's bank entries
    params = {"embed_dim": 16, "heads": 2, **({"J": 8, "W": 8} if method == "causal" else {}),
              **({"inference": "both"} if method == "scl" else {})}
    torch.manual_seed(0)
    model = registry.build(method, params, data.info).eval()
    val = data["val"]
    rows = engine.accumulate(model, val, data.task, data.info, batch_size=4)
    whole = data.task.accumulator(data.info)
    F = 7  # every val segment of the fixture
    for seg in dict.fromkeys(val.segment_ids):
        b = val.batch(np.flatnonzero(np.array(val.segment_ids) == seg))
        R, T = b["features"].shape[:2]
        one = {k: v[:1] for k, v in b.items()}  # the per-segment columns (queries, text) of the first row
        one["features"] = b["features"].reshape(1, R * T, *b["features"].shape[2:])[:, :F]
        one["proposals"] = b["proposals"].reshape(1, R * T, -1, 4)[:, :F]
        one["gt_boxes"] = b["gt_boxes"].permute(1, 0, 2, 3).reshape(1, -1, R * T, 4)[:, :, :F]
        one["gt_valid"] = b["gt_valid"].permute(1, 0, 2).reshape(1, -1, R * T)[:, :, :F]
        scores = model.predict(one)  # [1, Kq, F, N]
        whole.update_batch(scores, one)
        in_rows = model.predict(b)  # [R, Kq, T, N]
        in_rows = in_rows.permute(1, 0, 2, 3).reshape(1, -1, R * T, in_rows.shape[-1])[:, :, :F]
        torch.testing.assert_close(in_rows, scores, rtol=1e-5, atol=1e-6)
    assert rows.counts[1].sum() == 16  # every valid box of the annotation scored
    np.testing.assert_array_equal(rows.counts, whole.counts)


def _scores(ds: Dataset, split: str):
    """Box/query metrics of a split, as the trials compute them: the task's accumulator fed by
    batches of (fixed) proposal scores, plus the random and upper-bound rows."""
    import torch

    from grounding import tasks

    data = tasks.load(ds, splits=(split,), optional=())
    arrays, acc = data[split], data.task.accumulator(data.info)
    b = arrays.batch(np.arange(len(arrays)))
    B, Kq = b["queries"].shape
    T, N = b["proposals"].shape[1:3]
    acc.update_batch(torch.arange(N, dtype=torch.float32).expand(B, Kq, T, N), b)
    return acc.compute(), data.task.baselines(arrays, data.info)


def test_splits_without_gt_boxes_are_not_scored(yc2_converted, anet_entities):
    """The public YouCook2-BB test file and the ActivityNet-Entities test skeleton hold no box:
    their box/query metrics are absent (the tables print "-"), never 0."""
    metrics, base = _scores(yc2_converted, "test")
    assert metrics == {} and base == {"random": {}, "upper_bound": {}}
    metrics, base = _scores(yc2_converted, "val")  # the split with boxes is scored as before
    assert set(metrics) == {"box_macro", "box_micro", "query_macro", "query_micro"}
    assert set(base["random"]) == set(base["upper_bound"]) == set(metrics)
    ane = anet_entities[0]
    assert ane.manifest.extra["stats"]["segments_with_boxes"] == {"train": 1, "test": 0}
    metrics, base = _scores(ane, "test")
    assert metrics == {} and base == {"random": {}, "upper_bound": {}}
    assert set(_scores(ane, "train")[0]) == {"box_macro", "box_micro", "query_macro", "query_micro"}


def test_a_val_split_without_boxes_is_refused_before_a_sweep(yc2_inputs, tmp_path):
    from grounding.data.converters import youcook2_bb
    from orchestration import preflight
    from orchestration.cli.sweep_args import ConfigError, parse

    base, _ = yc2_inputs
    root = tmp_path / "ds"
    youcook2_bb.convert(root, YC2, base / "feat", base / "prop", splits=["train", "val"], limit=3, text_encoder=None,
                        sizes=[YC2 / "official_yc2_training_vid.json", base / "yc2_bb_val_annotations.json"], **QUIET)
    assert Dataset.open(root).manifest.extra["stats"]["segments_with_boxes"] == {"train": 0, "val": 0}
    with pytest.raises(ConfigError, match=r"its val split has no valid ground-truth box .* with the val box file"):
        preflight.open_dataset(parse(["method=stvg", f"data.root={root}"]), tmp_path, log=lambda m: None)


def test_youcook2_bb_classes_table(yc2_converted):
    classes = yc2_converted.read_table("classes")
    glove = np.load(YC2 / "YC2_glove_dict_68x300_float32.npy")[1:]
    assert classes.num_rows == 67 and classes["name"].to_pylist() == NAMES
    np.testing.assert_array_equal(fixed_list_to_numpy(classes["word_vector"], (300,)), glove)
    _, lists = _yc2_segments()
    want = np.zeros(67, np.int64)
    for _, (_, c) in list(lists["train"].items())[:3]:
        want[sorted(set(c))] += 1
    np.testing.assert_array_equal(classes["train_count"].to_numpy(), want)


def test_youcook2_bb_reads_the_released_glove_pth(yc2_inputs, tmp_path):
    """The causal release ships YC2_glove_dict.pth (a torch-saved FloatTensor [68, 300]), not the .npy."""
    import shutil

    import torch

    from grounding.data.converters import youcook2_bb

    base, _ = yc2_inputs
    ann = tmp_path / "ann"
    shutil.copytree(YC2, ann)
    ref = np.load(ann / "YC2_glove_dict_68x300_float32.npy")
    (ann / "YC2_glove_dict_68x300_float32.npy").unlink()
    with pytest.raises(ConversionError, match=r"neither YC2_glove_dict\.pth \(the causal release\) nor "
                                              r"YC2_glove_dict_68x300_float32\.npy is there"):
        youcook2_bb.convert(tmp_path / "ds", ann, base / "feat", base / "prop", splits=["train"], limit=2,
                            sizes=[YC2 / "official_yc2_training_vid.json"], text_encoder=None, **QUIET)
    torch.save(torch.from_numpy(ref.copy()), ann / "YC2_glove_dict.pth")
    youcook2_bb.convert(tmp_path / "ds", ann, base / "feat", base / "prop", splits=["train"], limit=2,
                        sizes=[YC2 / "official_yc2_training_vid.json"], text_encoder=None, **QUIET)
    ds = Dataset.open(tmp_path / "ds")
    np.testing.assert_array_equal(fixed_list_to_numpy(ds.read_table("classes")["word_vector"], (300,)), ref[1:])
    assert "YC2_glove_dict.pth" in ds.manifest.producer["sources"]
    (ann / "YC2_glove_dict.pth").write_bytes(b"not a tensor")
    with pytest.raises(ConversionError, match=r"YC2_glove_dict\.pth: not a torch-saved tensor"):
        youcook2_bb.convert(tmp_path / "ds2", ann, base / "feat", base / "prop", splits=["train"], limit=2,
                            sizes=[YC2 / "official_yc2_training_vid.json"], text_encoder=None, **QUIET)


def _nafae_layout(base: Path, out: Path, split: str, items) -> None:
    """NAFAE's release (object_feature.md) built from the causal-layout fixture: one (20, 4096)
    float32 .npy per frame named <SSSS><FFFFFF> under <split dir>/<recipe>/<video>/, and
    <split>_box.json with the frame's (20, 4) boxes in 224x224 coordinates."""
    _, lists = _yc2_segments()
    boxes = {}
    for seg, _ in items:
        meta = lists[split][seg][0]
        recipe, vid, index = str(meta[1]), str(meta[2]), int(meta[3])
        f = np.load(base / "feat" / SPLIT_DIR[split] / f"{seg}.npy")[:, :20]
        p = np.load(base / "prop" / SPLIT_DIR[split] / f"{seg}.npy")[:, :20]
        d = out / SPLIT_DIR[split] / recipe / vid
        d.mkdir(parents=True, exist_ok=True)
        for j in range(len(f)):
            name = f"{index:04d}{16 * j:06d}"
            np.save(d / f"{name}.npy", f[j].astype(np.float32))
            boxes[f"{SPLIT_DIR[split]}/{recipe}/{vid}/{name}"] = p[j].tolist()
    (out / f"{split}_box.json").write_text(json.dumps(boxes))


def test_youcook2_bb_reads_nafae_per_frame_features(yc2_inputs, tmp_path):
    from grounding.data.converters import youcook2_bb

    base, plan = yc2_inputs
    _nafae_layout(base, tmp_path / "nafae", "val", plan["val"])
    kw = dict(splits=["val"], limit=3, text_encoder=None, boxes=[base / "yc2_bb_val_annotations.json"],
              sizes=[base / "yc2_bb_val_annotations.json"], feature_dtype="float32", **QUIET)
    # the same rows as the causal layout gives, in either evaluation setting: every frame (default,
    # 7 frames -> rows 0-4 and 5,6 + filler 4,5,6) or the 5 centre frames
    for eval_frames, frames in (("all", [[0, 1, 2, 3, 4], [5, 6, 4, 5, 6]]), ("centre", [[0, 2, 3, 4, 6]])):
        youcook2_bb.convert(tmp_path / f"causal-{eval_frames}", YC2, base / "feat", base / "prop",
                            eval_frames=eval_frames, **kw)
        youcook2_bb.convert(tmp_path / f"nafae-{eval_frames}", YC2, tmp_path / "nafae", None, layout="nafae",
                            eval_frames=eval_frames, **kw)
        ds, ref = Dataset.open(tmp_path / f"nafae-{eval_frames}"), Dataset.open(tmp_path / f"causal-{eval_frames}")
        assert ds.manifest.dims == {"T": 5, "N": 20, "D": 4096} and ds.manifest.extra["layout"].startswith("NAFAE")
        assert ds.manifest.extra["eval_frames"] == eval_frames
        a, b = _rows(ds, "val"), _rows(ref, "val")
        assert [r["segment_id"] for r in a] == [s for s, _ in plan["val"] for _ in frames]
        for k in ("features", "proposals", "gt_boxes", "gt_valid", "gt_class"):
            assert [r[k] for r in a] == [r[k] for r in b], k
        got = [np.asarray(r["features"]).reshape(5, 20, 4096)[:, 0, 0].tolist() for r in a[:len(frames)]]
        assert got == frames
    # a segment without frames is a missing input, named
    seg = plan["val"][1][0]
    meta = _yc2_segments()[1]["val"][seg][0]
    for f in (tmp_path / "nafae" / "validation" / str(meta[1]) / str(meta[2])).glob(f"{int(meta[3]):04d}*.npy"):
        f.unlink()
    with pytest.raises(ConversionError, match=r"missing inputs: NAFAE frames \S+/validation/"):
        youcook2_bb.convert(tmp_path / "ds2", YC2, tmp_path / "nafae", None, layout="nafae", **kw)


def test_youcook2_bb_converted_box_format_and_nafae_sentences(yc2_inputs, tmp_path):
    from grounding.data.converters import youcook2_bb

    base, _ = yc2_inputs
    root = tmp_path / "ds"
    youcook2_bb.convert(root, YC2, base / "feat", base / "prop", sizes=[base / "converted_val.json",
                        YC2 / "official_yc2_bb_public_test_annotations.json"],
                        boxes=[base / "converted_val.json"], splits=["val", "test"], limit=2, sentences="nafae",
                        nafae=DATA / "youcook2_bb" / "nafae", feature_dtype="float32", **QUIET)
    ds = Dataset.open(root)
    assert ds.manifest.feature_dtype == "float32"
    v0, v1 = _rows(ds, "val")[:2]  # every frame (the default): frames 0-4, then 5, 6 and filler
    assert v0["segment_id"] == v1["segment_id"]
    np.testing.assert_array_equal(np.asarray(v0["gt_valid"]).reshape(-1, 5)[0], [True, True, False, False, False])
    np.testing.assert_array_equal(np.asarray(v1["gt_valid"]).reshape(-1, 5)[0], [True, True, False, False, False])
    np.testing.assert_allclose(np.asarray(v1["gt_boxes"]).reshape(-1, 5, 4)[0, 1], [300, 200, 400, 350])
    sentences = json.loads((YC2 / "seg_sentence_dict.json").read_text())
    for r in _rows(ds, "test"):  # NAFAE's sentence_raw, segment i of the video = <video>_<i:02d>
        assert r["sentence"] == sentences[r["segment_id"]]


def test_youcook2_bb_bad_inputs_write_nothing(yc2_inputs, tmp_path):
    from grounding.data.converters import youcook2_bb

    base, plan = yc2_inputs
    root = tmp_path / "out"
    with pytest.raises(ConversionError, match="frame size of video DBgap0YANhs"):
        youcook2_bb.convert(root, YC2, base / "feat", base / "prop", sizes=[YC2 / "official_yc2_training_vid.json"],
                            splits=["train", "val"], limit=2, **QUIET)
    _, lists = _yc2_segments()
    seg = list(lists["train"])[3]  # the 4th training segment has no feature file
    with pytest.raises(ConversionError, match=rf"missing inputs: \S+/training/{seg}\.npy; .*pass --skip-missing"):
        youcook2_bb.convert(root, YC2, base / "feat", base / "prop", splits=["train"], limit=5,
                            sizes=[YC2 / "official_yc2_training_vid.json"], **QUIET)
    assert not root.exists() and list(tmp_path.iterdir()) == []
    # --skip-missing leaves them out and counts them, up to --max-missing-fraction of a split (default 5 %)
    with pytest.raises(ConversionError, match=rf"too much of the data is missing: train: 2 of 5 segments left out "
                                              rf"\(40%\), e.g. \S+/training/{seg}\.npy; pass --max-missing-fraction F"):
        youcook2_bb.convert(root, YC2, base / "feat", base / "prop", splits=["train"], limit=5, skip_missing=True,
                            sizes=[YC2 / "official_yc2_training_vid.json"], **QUIET)
    assert not root.exists()
    youcook2_bb.convert(root, YC2, base / "feat", base / "prop", splits=["train"], limit=5, skip_missing=True,
                        max_missing_fraction=0.4, sizes=[YC2 / "official_yc2_training_vid.json"], **QUIET)
    m = Dataset.open(root).manifest
    assert m.split_rows("train") == 3 and m.extra["stats"]["segments_skipped"] == 2
    # a file of the wrong shape fails half-way: still nothing at the destination
    bad = tmp_path / "feat2"
    import shutil
    shutil.copytree(base / "feat", bad)
    np.save(bad / "training" / f"{plan['train'][1][0]}.npy", np.zeros((7, 10, 4096), np.float32))
    with pytest.raises(ConversionError, match=r"features must be \[frames, >=20, 4096\]; got shape \(7, 10, 4096\)"):
        youcook2_bb.convert(tmp_path / "out2", YC2, bad, base / "prop", splits=["train"], limit=3,
                            sizes=[YC2 / "official_yc2_training_vid.json"], **QUIET)
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))


def test_youcook2_bb_skip_missing_never_empties_a_split(yc2_inputs, tmp_path, capsys):
    """The README's short command once gave only the training sizes: with --skip-missing every val and
    test segment was dropped and the conversion 'succeeded' (test: 0 segments). Now: exit 2, one line."""
    from grounding.data.cli import main

    base, _ = yc2_inputs
    root = tmp_path / "ds"
    args = ["convert", "youcook2-bb", "--annotations", str(YC2), "--features", str(base / "feat"),
            "--proposals", str(base / "prop"), "--sizes", str(YC2 / "official_yc2_training_vid.json"),
            "--boxes", str(base / "yc2_bb_val_annotations.json"), "--rename-split", "test=test_iid",
            "--text-encoder", "none", "--limit", "3", "--skip-missing", str(root)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: too much of the data is missing: ")
    assert ("val: 3 of 3 segments left out (100%), e.g. frame size of video DBgap0YANhs (give its rwidth/rheight "
            "with --sizes)") in err[0] and "test_iid: 3 of 3 segments left out (100%)" in err[0]
    assert "a split cannot end up empty" in err[0] and not root.exists()
    # even a permissive fraction does not accept an empty split
    assert main([*args, "--max-missing-fraction", "1"]) == 2 and not root.exists()
    assert "cannot end up empty" in capsys.readouterr().err
    assert main([*args, "--max-missing-fraction", "1.5"]) == 2
    assert "--max-missing-fraction 1.5: must be in [0, 1]" in capsys.readouterr().err
    # with the val and test sizes (docs/shards.md's command) nothing is missing
    sizes = ["--sizes", str(base / "yc2_bb_val_annotations.json"),
             "--sizes", str(YC2 / "official_yc2_bb_public_test_annotations.json")]
    assert main([*args, *sizes]) == 0
    m = Dataset.open(root).manifest
    assert m.extra["stats"]["segments_skipped"] == 0 and m.extra["eval_frames"] == "all"
    assert {sp: m.split_rows(sp) for sp in m.splits} == {"train": 3, "val": 6, "test_iid": 6}  # every frame
    # the 5-centre-frame setting, by its flag (docs/shards.md)
    assert main([*args[:-1], *sizes, "--eval-frames", "centre", str(tmp_path / "centre")]) == 0
    m = Dataset.open(tmp_path / "centre").manifest
    assert m.extra["eval_frames"] == "centre" and {sp: m.split_rows(sp) for sp in m.splits} == {
        "train": 3, "val": 3, "test_iid": 3}
    with pytest.raises(SystemExit) as e:
        main([*args[:-1], *sizes, "--eval-frames", "five", str(tmp_path / "five")])
    assert e.value.code == 2 and "--eval-frames: invalid choice: 'five' (choose from 'all', 'centre')" in \
        capsys.readouterr().err


# ==================================================================== ActivityNet-Entities
ANE = DATA / "activitynet_entities"


@pytest.fixture(scope="module")
def anet_entities(tmp_path_factory):
    from grounding.data.converters import anet_entities

    base = tmp_path_factory.mktemp("ane")
    skeleton = json.loads((ANE / "anet_entities_cleaned_class_thresh50_test_skeleton.json").read_text())
    train_vid = json.loads((ANE / "split_ids_anet_entities.json").read_text())["training"][0]
    # the trainval file (with boxes) is not packaged (too large): one real training video id, GVD's format
    trainval = {"vocab": skeleton["vocab"], "annotations": {train_vid: {"duration": 50.0, "segments": {"0": {
        "tokens": ["A", "man", "rides", "a", "bike", "."], "timestamps": [0.0, 10.0],
        "process_clss": [["bike"], ["man"]], "process_idx": [[4], [1]], "frame_ind": [3, 7],
        "process_bnd_box": [[10, 20, 200, 300], [50, 60, 70, 80]], "crowds": [0, 0]}}}}}
    (base / "trainval.json").write_text(json.dumps(trainval))
    segs = [f"{train_vid}_segment_00"] + [f"{v}_segment_{int(k):02d}" for v in list(skeleton["annotations"])[:2]
                                          for k in skeleton["annotations"][v]["segments"]]
    (base / "feat").mkdir()
    dets = np.zeros((len(segs), 120, 7), np.float32)
    for i, s in enumerate(segs):
        f = np.zeros((10, 12, 2048), np.float32)
        f[:, :, 0] = np.arange(10)[:, None]
        np.save(base / "feat" / f"{s}.npy", f)
        dets[i, :, :4] = np.arange(120 * 4).reshape(120, 4) + i
        dets[i, :, 4] = np.repeat(np.arange(10), 12)
    with h5py.File(base / "dets.h5", "w") as h:
        h["dets_labels"] = dets
        h["dets_num"] = np.full(len(segs), 120)
    (base / "dic.json").write_text(json.dumps({"videos": [{"id": s, "split": "x"} for s in segs]}))
    (base / "glove.txt").write_text("man " + " ".join(["0.5"] * 8) + "\nbike " + " ".join(["-1"] * 8) + "\n")
    root = base / "ds"
    anet_entities.convert(root, [base / "trainval.json", ANE / "anet_entities_cleaned_class_thresh50_test_skeleton.json"],
                          ANE / "split_ids_anet_entities.json", base / "feat", proposals_h5=base / "dets.h5",
                          dic=base / "dic.json", glove_txt=base / "glove.txt", splits=["train", "test"], N=10,
                          limit=4, **QUIET)
    return Dataset.open(root), skeleton, train_vid


def test_anet_entities_rows_boxes_and_classes(anet_entities):
    ds, skeleton, train_vid = anet_entities
    ds.verify()
    m = ds.manifest
    assert (m.task, m.dims) == ("wsvog", {"T": 10, "N": 10, "D": 2048})
    assert {sp: m.split_rows(sp) for sp in m.splits} == {"train": 1, "test": 4}
    vocab = skeleton["vocab"]
    (tr,) = _rows(ds, "train")
    assert tr["segment_id"] == f"{train_vid}_segment_00" and tr["sentence"] == "A man rides a bike ."
    assert tr["query_classes"] == [vocab.index("man"), vocab.index("bike")]  # sentence order
    assert tr["gt_class"] == [vocab.index("bike"), vocab.index("man")]  # box order
    valid = np.asarray(tr["gt_valid"]).reshape(2, 10)
    boxes = np.asarray(tr["gt_boxes"]).reshape(2, 10, 4)
    assert valid[0].nonzero()[0].tolist() == [3] and valid[1].nonzero()[0].tolist() == [7]
    np.testing.assert_allclose(boxes[0, 3], [10, 20, 200, 300])
    np.testing.assert_allclose(boxes[1, 7], [50, 60, 70, 80])
    props = np.asarray(tr["proposals"]).reshape(10, 10, 4)  # GVD rows 12*f .. 12*f+9 of dets_labels, no rescaling
    np.testing.assert_allclose(props[2, 0], np.arange(24 * 4, 24 * 4 + 4))
    assert (tr["frame_width"], tr["frame_height"]) == (720, 405) and m.extra["stats"]["default_frame_size_used"] == 5
    test = _rows(ds, "test")
    first = skeleton["annotations"]["v_bXdq2zI1Ms0"]["segments"]
    assert [r["segment_id"] for r in test[:3]] == [f"v_bXdq2zI1Ms0_segment_{int(k):02d}" for k in first]
    assert test[1]["query_classes"] == [vocab.index("man"), vocab.index("he")]
    assert not any(v for r in test for v in r["gt_valid"])  # the test skeleton holds no boxes
    classes = ds.read_table("classes")
    vec = fixed_list_to_numpy(classes["word_vector"], (8,))
    np.testing.assert_array_equal(vec[vocab.index("man")], 0.5)
    assert classes.num_rows == len(vocab) == 431 and m.extra["stats"]["classes_without_glove"] == 429
    assert classes["train_count"].to_numpy()[[vocab.index("man"), vocab.index("bike"), vocab.index("he")]].tolist() == [1, 1, 0]


# ========================================================================= moment: Charades
def _ramp_h5(path: Path, videos: dict[str, int], D: int, key: str | None = None, extra_axes: bool = False):
    with h5py.File(path, "w") as h:
        for v, F in videos.items():
            a = np.repeat(np.arange(F, dtype=np.float32)[:, None], D, 1)
            if extra_axes:
                a = a[:, None, None, :]
            if key:
                h.create_group(v)[key] = a
            else:
                h[v] = a


def _cpl_pool(F: int, L: int) -> np.ndarray:
    """CPL's _sample_frame_features on the ramp 0..F-1 (written out independently)."""
    idx = np.round(np.arange(0, L + 1) / L * F).astype(np.int64)
    idx[idx >= F] = F - 1
    return np.array([float(idx[j]) if idx[j] == idx[j + 1] else np.arange(idx[j], idx[j + 1]).mean() for j in range(L)])


def _first_videos(records, n):
    out = []
    for r in records:
        if r[0] not in out:
            out.append(r[0])
    return out[:n]


@pytest.fixture(scope="module")
def charades_sta(tmp_path_factory):
    from grounding.data.converters import charades

    base = tmp_path_factory.mktemp("sta")
    sta = DATA / "charades_sta"
    train, test = (json.loads((sta / f).read_text()) for f in ("train.json", "test.json"))
    frames = {v: F for v, F in zip(_first_videos(train, 2) + _first_videos(test, 2), (37, 5, 64, 9))}
    _ramp_h5(base / "i3d.hdf5", frames, 1024)
    root = base / "ds"
    charades.convert(root, "charades-sta", {"train": sta / "train.json", "test": sta / "test.json"},
                     base / "i3d.hdf5", L=8, glove_pkl=sta / "glove.pkl", limit=2, **QUIET)
    return Dataset.open(root), train, test, frames


def test_charades_sta_rows_moments_and_pooling(charades_sta):
    ds, train, test, frames = charades_sta
    ds.verify()
    m = ds.manifest
    assert (m.task, m.dims) == ("moment", {"L": 8, "D": 1024})
    rows = _rows(ds, "train")
    assert [r["video_id"] for r in rows] == ["AO8RW", "Y6R7T"]
    recs = [r for r in train if r[0] == "Y6R7T"]
    y = rows[1]
    assert y["duration"] == pytest.approx(29.42)
    assert y["sentences"] == [r[3] for r in recs] and y["sample_ids"] == [f"Y6R7T_{j}" for j in range(len(recs))]
    np.testing.assert_allclose(y["moments"], [r[2] for r in recs], rtol=1e-6)  # seconds
    feats = np.asarray(rows[0]["features"], np.float32).reshape(8, 1024)
    np.testing.assert_allclose(feats[:, 0], _cpl_pool(37, 8), rtol=1e-3)
    assert feats[0, 0] == 2.0  # mean of frames 0..4
    np.testing.assert_allclose(np.asarray(rows[1]["features"], np.float32).reshape(8, 1024)[:, 0], _cpl_pool(5, 8))
    assert m.split_rows("test") == 2


def test_charades_sta_vocabulary_ids_follow_the_glove_rows(charades_sta):
    ds = charades_sta[0]
    w2id = json.loads((DATA / "charades_sta" / "glove_vocab_w2id_counter.json").read_text())["w2id"]
    row = _rows(ds, "train")[0]
    assert row["sentences"][0] == "a person is putting a book on a shelf."
    assert row["word_ids"][0] == [w2id[w] for w in ["a", "person", "is", "putting", "a", "book", "on", "a", "shelf", "."]]
    vocab = ds.read_table("vocab")
    words = vocab["word"].to_pylist()
    assert len(words) == 1147 and words[0] == "<PAD>" and words[-1] == "<UNK>"
    assert all(words[i] == w for w, i in w2id.items())
    vec = fixed_list_to_numpy(vocab["word_vector"], (300,))
    np.testing.assert_array_equal(vec[:1146], np.load(DATA / "charades_sta" / "glove_vectors_1146x300_float32.npy"))
    assert not vec[-1].any() and ds.manifest.extra["unk_id"] == 1146
    from grounding.data.converters.common import Glove, Vocab

    g = Glove.load(npy=DATA / "charades_sta" / "glove_vectors_1146x300_float32.npy",
                   vocab=DATA / "charades_sta" / "glove_vocab_w2id_counter.json")
    v = Vocab.from_glove(g, __import__("collections").Counter())
    assert v.encode("person opens the zzzfridge") == [w2id["person"], w2id["opens"], w2id["the"], 1146]


def test_charades_cd_clips_moments_to_the_duration(tmp_path):
    from grounding.data.converters import charades

    cd = DATA / "charades_cd"
    val = json.loads((cd / "charades_val.json").read_text())
    subset = {k: val[k] for k in ("3MSZA", "FZIW9")}  # real records; FZIW9 ends at 34.0 in a 32.875 s video
    (tmp_path / "val.json").write_text(json.dumps(subset))
    ood = list(json.loads((cd / "charades_test_ood.json").read_text()))[:2]
    _ramp_h5(tmp_path / "i3d.hdf5", {"3MSZA": 20, "FZIW9": 30, ood[0]: 12, ood[1]: 12}, 1024, extra_axes=True)
    sta = DATA / "charades_sta"
    charades.convert(tmp_path / "ds", "charades-cd", {"val": tmp_path / "val.json", "test_ood": cd / "charades_test_ood.json"},
                     tmp_path / "i3d.hdf5", L=4, glove_npy=sta / "glove_vectors_1146x300_float32.npy",
                     glove_vocab=sta / "glove_vocab_w2id_counter.json", limit=2, **QUIET)
    ds = Dataset.open(tmp_path / "ds")
    rows = {r["video_id"]: r for r in _rows(ds, "val")}
    assert rows["FZIW9"]["moments"] == [[26.799999237060547, 32.875]] and rows["FZIW9"]["duration"] == 32.875
    assert rows["3MSZA"]["moments"] == [[pytest.approx(24.3), pytest.approx(30.4)]] * 4
    assert ds.manifest.extra["stats"]["queries_clipped"] == 1
    assert [r["video_id"] for r in _rows(ds, "test_ood")] == ood
    assert ds.manifest.dims == {"L": 4, "D": 1024}  # [T, 1, 1, 1024] squeezed


def test_moment_converter_missing_features_is_one_clear_error(tmp_path):
    from grounding.data.converters import charades

    _ramp_h5(tmp_path / "i3d.hdf5", {"AO8RW": 5}, 16)
    sta = DATA / "charades_sta"
    with pytest.raises(ConversionError, match=r"no f\[video\] for 1 video\(s\), e.g. Y6R7T; pass --skip-missing"):
        charades.convert(tmp_path / "ds", "charades-sta", {"train": sta / "train.json"}, tmp_path / "i3d.hdf5",
                         glove_pkl=sta / "glove.pkl", limit=2, **QUIET)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ConversionError, match=r"train: 1 of 2 videos left out \(50%\), e.g. no f\[video\] for Y6R7T; "
                                              r"pass --max-missing-fraction F \(now 0.05\)"):
        charades.convert(tmp_path / "ds", "charades-sta", {"train": sta / "train.json"}, tmp_path / "i3d.hdf5",
                         glove_pkl=sta / "glove.pkl", limit=2, skip_missing=True, **QUIET)
    charades.convert(tmp_path / "ds", "charades-sta", {"train": sta / "train.json"}, tmp_path / "i3d.hdf5",
                     glove_pkl=sta / "glove.pkl", limit=2, skip_missing=True, max_missing_fraction=0.5, **QUIET)
    m = Dataset.open(tmp_path / "ds").manifest
    assert m.extra["stats"]["videos_skipped"] == 1
    # no L given: 200 clips, CPL's and CCR's max_num_frames (5 frames repeat, as CPL's pooling)
    assert m.dims["L"] == 200 and m.extra["num_clips"] == 200
    with pytest.raises(ConversionError, match="give exactly one of --glove-txt"):
        charades.convert(tmp_path / "ds2", "charades-sta", {"train": sta / "train.json"}, tmp_path / "i3d.hdf5",
                         limit=1, **QUIET)


# ================================================================ moment: ActivityNet (C3D)
def test_anet_captions_and_cd_with_c3d_features(tmp_path):
    from grounding.data.converters import anet_captions

    capt = DATA / "activitynet_captions"
    val = json.loads((capt / "val_data.json").read_text())
    vids = _first_videos(val, 2)
    cd_val = list(json.loads((DATA / "activitynet_cd" / "anet_val.json").read_text()))[:2]
    _ramp_h5(tmp_path / "c3d.hdf5", {v: 40 for v in set(vids + cd_val)}, 500, key="c3d_features")
    (tmp_path / "glove.txt").write_text("".join(f"{w} " + " ".join([str(i)] * 4) + "\n"
                                                for i, w in enumerate(["the", "camera", "water", "."])))
    # a 4-word GloVe file covers 12.5 % of the tokens: refused by default, naming the file
    with pytest.raises(ConversionError, match=r"vocabulary coverage below 90% with the GloVe file \S+/glove\.txt: "
                                              r"val 12\.5% of the tokens have a vector"):
        anet_captions.convert(tmp_path / "capt", "anet-captions", {"val": capt / "val_data.json"},
                              tmp_path / "c3d.hdf5", L=16, glove_txt=tmp_path / "glove.txt", limit=2, **QUIET)
    assert not (tmp_path / "capt").exists()
    anet_captions.convert(tmp_path / "capt", "anet-captions", {"val": capt / "val_data.json"}, tmp_path / "c3d.hdf5",
                          L=16, glove_txt=tmp_path / "glove.txt", limit=2, min_vocab_coverage=0.1, **QUIET)
    ds = Dataset.open(tmp_path / "capt")
    assert ds.manifest.extra["stats"]["vocab_coverage"] == {"val": 0.125}
    assert ds.manifest.dims == {"L": 16, "D": 500}
    rows = _rows(ds, "val")
    assert [r["video_id"] for r in rows] == vids
    recs = [r for r in val if r[0] == vids[0]]
    assert rows[0]["sentences"] == [r[3].strip() for r in recs]  # " They are next shown ..." -> stripped
    np.testing.assert_allclose(rows[0]["moments"], [r[2] for r in recs], rtol=1e-6)
    vocab = ds.read_table("vocab").to_pylist()
    assert ds.manifest.extra["vocab"] == "sentences" and vocab[0]["word"] == "<PAD>" and vocab[-1]["word"] == "<UNK>"
    counts = [v["count"] for v in vocab[1:-1]]
    assert counts == sorted(counts, reverse=True)  # words of the (only) split by frequency
    ids = {v["word"]: v["word_id"] for v in vocab}
    assert rows[0]["word_ids"][1][:3] == [ids["they"], ids["are"], ids["next"]]
    assert vocab[ids["water"]]["word_vector"] == [2.0] * 4 and vocab[ids["they"]]["word_vector"] == [0.0] * 4

    cd = DATA / "activitynet_cd"
    anet_captions.convert(tmp_path / "cd", "anet-cd", {"val": cd / "anet_val.json"}, tmp_path / "c3d.hdf5", L=16,
                          glove_txt=tmp_path / "glove.txt", limit=2, min_vocab_coverage=0, **QUIET)
    ann = json.loads((cd / "anet_val.json").read_text())
    rows = _rows(Dataset.open(tmp_path / "cd"), "val")
    assert [r["video_id"] for r in rows] == cd_val
    assert rows[0]["duration"] == pytest.approx(ann[cd_val[0]]["duration"])
    np.testing.assert_allclose(rows[0]["moments"], np.minimum(ann[cd_val[0]]["timestamps"], ann[cd_val[0]]["duration"]),
                               rtol=1e-6)
    assert len(rows[0]["sample_ids"]) == len(ann[cd_val[0]]["sentences"])


# VidSTG / HC-STVG (task ``tube``): tests/grounding/test_tube_converters.py


# ============================================================================== CLI convert
def test_cli_convert_then_verify(tmp_path):
    from _data_helpers import cli

    sta = DATA / "charades_sta"
    train = json.loads((sta / "train.json").read_text())
    _ramp_h5(tmp_path / "i3d.hdf5", {v: 10 for v in _first_videos(train, 3)}, 32)
    root = tmp_path / "ds"
    args = ["convert", "charades-sta", "--split", f"train={sta / 'train.json'}", "--features", str(tmp_path / "i3d.hdf5"),
            "--glove-pkl", str(sta / "glove.pkl"), "--num-clips", "4", "--limit", "3", "--feature-dtype", "float32",
            "--rename-split", "train=train_small", str(root)]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "train_small" in r.stdout
    m = Dataset.open(root).manifest
    assert m.splits == ["train_small"] and m.feature_dtype == "float32" and m.producer["args"]["limit"] == 3
    assert cli("verify", str(root)).returncode == 0
    r = cli(*args)  # exists now
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    r = cli("convert", "charades-sta", "--split", "train", "--features", "x", str(tmp_path / "new"))
    assert r.returncode == 2 and "--split 'train' is not NAME=FILE" in r.stderr
    with pytest.raises(DataError):
        Dataset.open(tmp_path / "new")


def test_charades_sta_without_val_names_the_flags_then_the_documented_command_trains(tmp_path, capsys):
    """Charades-STA publishes train and test only: the converter's summary and the sweep's refusal
    name the flags that add a val split (CPL validates on test); docs/shards.md's command is this one."""
    from grounding.data.cli import main
    from orchestration import preflight
    from orchestration.cli.sweep_args import ConfigError, parse

    ann = tmp_path / "ann"
    (ann / "charades_sta").mkdir(parents=True)
    sta = ann / "charades_sta"
    for f in ("train.json", "test.json"):
        recs = json.loads((DATA / "charades_sta" / f).read_text())
        vids = _first_videos(recs, 3)
        (sta / f).write_text(json.dumps([r for r in recs if r[0] in vids]))
    vids = {r[0] for f in ("train.json", "test.json") for r in json.loads((sta / f).read_text())}
    _ramp_h5(tmp_path / "i3d.hdf5", {v: 10 for v in vids}, 32)
    common = ["--features", str(tmp_path / "i3d.hdf5"), "--glove-pkl", str(DATA / "charades_sta" / "glove.pkl"),
              "--num-clips", "4"]
    assert main(["convert", "charades-sta", "--annotations", str(sta), *common, str(tmp_path / "no-val")]) == 0
    note = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note: ")]
    assert note == [f"note: no val split (it has train, test); a sweep ranks trials on val: convert again adding "
                    f"--split val={sta / 'test.json'} --rename-split test=test_iid (as CPL does: it validates on "
                    f"the test annotations)"]
    cfg = parse(["method=cpl", f"data.root={tmp_path / 'no-val'}"])
    with pytest.raises(ConfigError) as e:
        preflight.open_dataset(cfg, tmp_path, log=lambda m: None)
    assert str(e.value).endswith(f"ranks trials on val; convert again adding --split val={sta / 'test.json'} "
                                 f"--rename-split test=test_iid (as CPL does: it validates on the test annotations)")
    # the documented command (docs/shards.md §10)
    root = tmp_path / "charades-sta"
    assert main(["convert", "charades-sta", "--annotations", str(sta), "--split", f"val={sta / 'test.json'}",
                 "--rename-split", "test=test_iid", *common, str(root)]) == 0
    assert "note: " not in capsys.readouterr().out
    assert sorted(Dataset.open(root).manifest.splits) == ["test_iid", "train", "val"]
    cfg = parse(["method=cpl", f"data.root={root}"])
    assert "val" in preflight.open_dataset(cfg, tmp_path, log=lambda m: None).manifest.splits
