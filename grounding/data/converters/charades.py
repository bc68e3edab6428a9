"""Charades-STA and Charades-CD with I3D features -> task ``moment``.

* ``charades-sta``: CPL/CCR's ``train.json``/``test.json`` records ``[video, duration, [start,
  end], sentence]`` -> splits ``train``/``test``;
* ``charades-cd``: ``charades_{train,val,test_iid,test_ood}.json`` (``{video: {timestamps,
  sentences, video_duration, …}}``) -> splits ``train``/``val``/``test_iid``/``test_ood``.

Features: one HDF5 file with ``f[video] -> [frames, 1024]`` (CPL's ``i3d_features.hdf5``;
``[frames, 1, 1, 1024]`` is squeezed), pooled to ``--num-clips`` clips (default 200, CPL/CCR's ``max_num_frames``) by CPL's
mean pooling. GloVe: ``--glove-pkl charades_sta/glove.pkl`` (restricted unpickler) or
``--glove-npy charades_sta/glove_vectors_1146x300_float32.npy --glove-vocab
charades_sta/glove_vocab_w2id_counter.json`` or ``--glove-txt``. See :mod:`._moment` for the row
conventions (one row per video, moments in seconds, vocabulary ids).
"""

from __future__ import annotations

from . import _moment

PRODUCER = "grounding.data.converters.charades"
DEFAULTS = {
    "charades-sta": {"train": "train.json", "test": "test.json"},
    "charades-cd": {"train": "charades_train.json", "val": "charades_val.json",
                    "test_iid": "charades_test_iid.json", "test_ood": "charades_test_ood.json"},
}
HELP = {
    "charades-sta": "Charades-STA records + I3D HDF5 f[vid] [T,1024] -> moment",
    "charades-cd": "Charades-CD JSON + I3D HDF5 f[vid] [T,1024] -> moment",
}
DEFAULT_L = 200  # CPL's and CCR's config/charades/main.json: max_num_frames 200, target_stride 1


def convert(root, fmt: str, split_files: dict[str, str], features: str, L: int = DEFAULT_L,
            feature_key: str | None = None, **kw):
    """Python API: ``split_files`` maps split -> annotation file; see :func:`._moment.convert`."""
    return _moment.convert(root, name=fmt, producer_name=PRODUCER, source=fmt.replace("-", "_"),
                           split_files=split_files, features=features, feature_key=feature_key, L=L, **kw)


def add_arguments(p, fmt: str) -> None:
    _moment.add_arguments(p, DEFAULT_L, "I3D features: HDF5 with f[video] -> [frames, 1024]", None,
                          ", ".join(DEFAULTS[fmt].values()))


def run(args, root, common: dict, fmt: str):
    return _moment.run(args, root, common, name=fmt, producer_name=PRODUCER, source=fmt.replace("-", "_"),
                       defaults=DEFAULTS[fmt])
