"""ActivityNet Captions and ActivityNet-CD with C3D features -> task ``moment``.

* ``anet-captions``: CPL's ``{train,val,test}_data.json`` records ``[video, duration, [start,
  end], sentence]`` (``val`` = the official val_1, ``test`` = val_2) -> splits
  ``train``/``val``/``test``; the official ``{train,val_1,val_2}.json`` dicts work too via
  ``--split NAME=FILE``;
* ``anet-cd``: ``anet_{train,val,test_iid,test_ood}.json`` (``{video: {duration, timestamps,
  sentences}}``) -> splits ``train``/``val``/``test_iid``/``test_ood``.

Features: the C3D HDF5 (``sub_activitynet_v1-3.c3d.hdf5``) with ``f[video]["c3d_features"] ->
[frames, 500]``, pooled to ``--num-clips`` clips (default 200, CPL/CCR's ``max_num_frames``) by CPL's mean
pooling. See
:mod:`._moment` for the row conventions.
"""

from __future__ import annotations

from . import _moment

PRODUCER = "grounding.data.converters.anet_captions"
DEFAULTS = {
    "anet-captions": {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"},
    "anet-cd": {"train": "anet_train.json", "val": "anet_val.json", "test_iid": "anet_test_iid.json",
                "test_ood": "anet_test_ood.json"},
}
HELP = {
    "anet-captions": "ActivityNet Captions records + C3D HDF5 f[vid]['c3d_features'] -> moment",
    "anet-cd": "ActivityNet-CD JSON + C3D HDF5 f[vid]['c3d_features'] -> moment",
}
DEFAULT_L = 200  # CPL's and CCR's config/activitynet/main.json: max_num_frames 200, target_stride 1
FEATURE_KEY = "c3d_features"


def convert(root, fmt: str, split_files: dict[str, str], features: str, L: int = DEFAULT_L,
            feature_key: str | None = FEATURE_KEY, **kw):
    """Python API: ``split_files`` maps split -> annotation file; see :func:`._moment.convert`."""
    return _moment.convert(root, name=fmt, producer_name=PRODUCER, source=fmt.replace("-", "_"),
                           split_files=split_files, features=features, feature_key=feature_key, L=L, **kw)


def add_arguments(p, fmt: str) -> None:
    _moment.add_arguments(p, DEFAULT_L, "C3D features: HDF5 with f[video]['c3d_features'] -> [frames, 500]",
                          FEATURE_KEY, ", ".join(DEFAULTS[fmt].values()))


def run(args, root, common: dict, fmt: str):
    return _moment.run(args, root, common, name=fmt, producer_name=PRODUCER, source=fmt.replace("-", "_"),
                       defaults=DEFAULTS[fmt])
