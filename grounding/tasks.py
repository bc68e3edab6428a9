"""Task families: how a family's splits are loaded, what a model learns about them, and how its
predictions are scored. Methods name their family (``Model.task``); the engine stays generic."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from .data import mapped as mapped_form
from .data.moment import MomentArrays, content_flags
from .data.shards import Dataset
from .data.tube import TubeArrays
from .data.wsvog import WsvogArrays, fixed_list_to_numpy
from .metrics import moment as moment_metrics
from .metrics import tube as tube_metrics
from .metrics import wsvog as wsvog_metrics
from .metrics.moment import MomentRecall
from .metrics.tube import TubeMetrics
from .metrics.wsvog import WsvogAccuracy
from .models.base import DataInfo

EVAL_SPLITS = ("val", "test_iid", "test_ood")


def dataset_name(ds: Dataset) -> str | None:
    """What :attr:`DataInfo.dataset` says: the manifest's ``extra["source"]`` (converted data) or
    ``extra["benchmark"]`` (generated data), None when it records neither."""
    extra = ds.manifest.extra or {}
    name = extra.get("source") or extra.get("benchmark")
    return str(name) if name else None


def scoring_protocol(ds: Dataset) -> str | None:
    """The line a results table carries where a dataset is not scored the one obvious way: for
    YouCook2-BB, which frames of a segment are scored (``extra.eval_frames`` of the converter,
    :mod:`grounding.data.converters.youcook2_bb`; a conversion that predates the setting kept the
    ``T`` centre frames); the generated YouCook2-BB benchmark scores its ``T`` frames. None for the
    other datasets."""
    extra = ds.manifest.extra or {}
    T = ds.manifest.dims.get("T")
    if extra.get("source") == "youcook2_bb":
        if extra.get("eval_frames", "centre") == "all":
            return "scoring: YouCook2-BB, every annotated frame of each segment (eval_frames=all, the published test)"
        return (f"scoring: YouCook2-BB, {T} centre frames per segment (eval_frames=centre; the published test "
                f"scores every annotated frame, so these numbers are not comparable with the papers' tables)")
    if extra.get("benchmark") == "youcook2_bb_generated":
        return (f"scoring: generated YouCook2-BB benchmark, its {T} frames per segment (the 5-frame setting, "
                f"eval_frames=centre; not the published every-annotated-frame test)")
    return None


class Accumulator(Protocol):
    def update_batch(self, predictions: Any, batch: dict) -> None: ...
    def state(self) -> np.ndarray: ...
    def merge(self, state: np.ndarray) -> None: ...
    def compute(self) -> dict[str, float]: ...


class Task(Protocol):
    name: str
    metric_names: tuple[str, ...]
    default_metric: str

    def load_split(self, ds: Dataset, split: str, rank: int, world: int, mapped: bool = True) -> Any: ...
    def data_info(self, ds: Dataset, train: Any, seed: int) -> DataInfo: ...
    def accumulator(self, info: DataInfo) -> Accumulator: ...
    def baselines(self, arrays: Any, info: DataInfo) -> dict[str, dict[str, float]]: ...


class WsvogTask:
    name = "wsvog"
    metric_names = wsvog_metrics.NAMES
    default_metric = "box_micro"

    layout = mapped_form.Layout(
        dense=("features", "proposals", "text_sentence"),
        rows=("queries", "gt_class", "gt_boxes", "gt_valid", "text_query", "word_ids", "word_pos"),
        row_strings=("segment_ids",),
        pad={"queries": -1, "gt_class": -1, "word_ids": -1, "word_pos": -1})

    def load_split(self, ds: Dataset, split: str, rank: int = 0, world: int = 1, mapped: bool = True):
        d = ds.manifest.dims
        read = lambda t: WsvogArrays.from_table(t, d["T"], d["N"], d["D"])  # noqa: E731
        if mapped:
            return mapped_form.open_split(ds, split, WsvogArrays, self.layout, read, rank, world)
        return read(ds.read_split(split, rank, world))

    def data_info(self, ds: Dataset, train, seed: int = 0) -> DataInfo:
        classes = ds.read_table("classes").sort_by("class_id")
        vectors = fixed_list_to_numpy(classes["word_vector"], (classes.schema.field("word_vector").type.list_size,))
        counts = classes["train_count"].to_numpy().astype(np.float64)
        priors = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
        words = None
        if "words" in ds.manifest.tables:  # schema v2 text features: GloVe vectors of the sentence words
            wt = ds.read_table("words").sort_by("word_id")
            words = fixed_list_to_numpy(wt["word_vector"], (wt.schema.field("word_vector").type.list_size,))
        return DataInfo(task=self.name, dims=dict(ds.manifest.dims), class_vectors=vectors.astype(np.float32),
                        class_priors=priors, train_features=getattr(train, "features", None), seed=seed,
                        word_vectors=words, text=ds.manifest.text, dataset=dataset_name(ds))

    def accumulator(self, info: DataInfo):
        class _Acc(WsvogAccuracy):
            def update_batch(self, predictions, batch):
                self.update(predictions, batch["proposals"], batch["queries"], batch["gt_class"],
                            batch["gt_boxes"], batch["gt_valid"])

        return _Acc(len(info.class_vectors))

    def baselines(self, arrays, info: DataInfo, batch_size: int = 256) -> dict[str, dict[str, float]]:
        out = {}
        for mode in ("random", "upper_bound"):
            acc = self.accumulator(info)
            for i in range(0, len(arrays), batch_size):
                acc.update_batch(mode, arrays.batch(np.arange(i, min(i + batch_size, len(arrays)))))
            out[mode] = acc.compute()
        return out


class MomentTask:
    """Temporal moment localisation (one query, one moment): predictions are ranked proposals
    ``[B, K, 2]`` of normalised (start, end), best first, or ``{"proposals": [B, K, 2], "top1":
    [B, 2]}`` when the top-1 is not the head of the ranking (see :mod:`grounding.metrics.moment`)."""

    name = "moment"
    metric_names = moment_metrics.NAMES
    default_metric = "r1_iou50"

    @staticmethod
    def _vocab(ds: Dataset):
        return ds.read_table("vocab").sort_by("word_id")

    layout = mapped_form.Layout(dense=("features",), queries=("video_index", "words", "lengths", "moments", "duration"),
                                row_strings=("video_ids",), query_strings=("sample_ids",))

    def load_split(self, ds: Dataset, split: str, rank: int = 0, world: int = 1, mapped: bool = True):
        d = ds.manifest.dims
        content = content_flags(self._vocab(ds)["word"].to_pylist())
        read = lambda t: MomentArrays.from_table(t, d["L"], d["D"], content=content)  # noqa: E731
        if mapped:
            return mapped_form.open_split(ds, split, MomentArrays, self.layout, read, rank, world, content=content)
        return read(ds.read_split(split, rank, world))

    def data_info(self, ds: Dataset, train, seed: int = 0) -> DataInfo:
        vocab = self._vocab(ds)
        vectors = fixed_list_to_numpy(vocab["word_vector"], (vocab.schema.field("word_vector").type.list_size,))
        return DataInfo(task=self.name, dims=dict(ds.manifest.dims), word_vectors=vectors.astype(np.float32),
                        train_features=getattr(train, "features", None), seed=seed, dataset=dataset_name(ds))

    def accumulator(self, info: DataInfo):
        class _Acc(MomentRecall):
            def update_batch(self, predictions, batch):
                self.update(predictions, batch["moments"])

        return _Acc()

    def baselines(self, arrays, info: DataInfo, batch_size: int = 1024) -> dict[str, dict[str, float]]:
        acc = self.accumulator(info)
        for i in range(0, len(arrays), batch_size):
            acc.update("random", np.array(arrays.moments[i:i + batch_size]))  # a writable copy of the map
        return {"random": acc.compute()}


class TubeTask:
    """Spatio-temporal tube grounding (one sentence, one tube): predictions are a dict with
    ``segment [B, 2]`` (half-open on the sampled frames) and ``proposal [B, T]`` (the chosen
    proposal per frame); see the tube batch contract (docs/shards.md, "Tube batches") and :mod:`grounding.metrics.tube` (m_tIoU on the
    original frame ids, the batch's ``frame_ids`` and ``gt_fids``, as TubeDETR computes it)."""

    name = "tube"
    metric_names = tube_metrics.NAMES
    default_metric = "m_viou"

    layout = mapped_form.Layout(
        dense=("frame_feats", "region_feats", "boxes", "frame_valid", "frame_ids", "tubes"),
        queries=("video_index", "tokens", "sentence_form", "subject_pos", "subject_class", "rel_subj", "rel_obj",
                 "rel_pred", "rel_valid", "gt_segment", "gt_fids", "gt_boxes", "gt_box_valid", "bow_resolvable",
                 "entity_ids"),
        row_strings=("video_ids",), query_strings=("sample_ids",))

    def load_split(self, ds: Dataset, split: str, rank: int = 0, world: int = 1, mapped: bool = True):
        read = lambda t: TubeArrays.from_table(t, ds.manifest.dims)  # noqa: E731
        if mapped:
            return mapped_form.open_split(ds, split, TubeArrays, self.layout, read, rank, world)
        return read(ds.read_split(split, rank, world))

    def data_info(self, ds: Dataset, train, seed: int = 0) -> DataInfo:
        vocab = ds.read_table("vocab").sort_by("word_id")
        words = fixed_list_to_numpy(vocab["word_vector"], (vocab.schema.field("word_vector").type.list_size,))
        classes = ds.read_table("classes").sort_by("class_id")
        cvec = fixed_list_to_numpy(classes["word_vector"], (classes.schema.field("word_vector").type.list_size,))
        counts = classes["train_count"].to_numpy().astype(np.float64)
        priors = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / max(len(counts), 1))
        return DataInfo(task=self.name, dims=dict(ds.manifest.dims), word_vectors=words.astype(np.float32),
                        class_vectors=cvec.astype(np.float32), class_priors=priors,
                        train_features=getattr(train, "features", None), seed=seed, dataset=dataset_name(ds))

    def accumulator(self, info: DataInfo):
        class _Acc(TubeMetrics):
            def update_batch(self, predictions, batch):
                if isinstance(predictions, str):
                    self.update_mode(predictions, batch)
                    return
                self.update(predictions["segment"].cpu(), predictions["proposal"].cpu(), batch["boxes"].cpu(),
                            batch["gt_boxes"].cpu(), batch["gt_box_valid"].cpu(), batch["frame_valid"].cpu(),
                            batch["sentence_form"].cpu(), batch["frame_ids"].cpu(), batch["gt_fids"].cpu(),
                            batch.get("bow_resolvable"))

        return _Acc(seed=info.seed)

    def baselines(self, arrays, info: DataInfo, batch_size: int = 256) -> dict[str, dict[str, float]]:
        out = {}
        for mode in tube_metrics.MODES:
            acc = self.accumulator(info)
            for i in range(0, len(arrays), batch_size):
                acc.update_batch(mode, arrays.batch(np.arange(i, min(i + batch_size, len(arrays)))))
            out[mode] = acc.compute()
        return out


_TASKS: dict[str, Task] = {"wsvog": WsvogTask(), "moment": MomentTask(), "tube": TubeTask()}


def get(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task family {name!r}; allowed: {', '.join(_TASKS)}") from None


@dataclasses.dataclass
class TaskData:
    """The splits one process trains and evaluates on, and what its model may know."""

    task: Task
    info: DataInfo
    splits: dict[str, Any]
    digest: str

    def __getitem__(self, split: str):
        return self.splits[split]


def load(ds: Dataset, splits=("train", *EVAL_SPLITS), rank: int = 0, world: int = 1, seed: int = 0,
         optional=("test_iid", "test_ood"), mapped: bool = True) -> TaskData:
    """Read this rank's share of each split (the whole split for world == 1). Splits named in
    ``optional`` are left out when the dataset lacks them (a converted dataset may have a single
    test split); any other missing split is an error naming what the dataset has.

    ``mapped`` (default): the arrays are read-only maps of the node's mapped copy of each split
    (:mod:`grounding.data.mapped`, built on first use), features in the dataset's dtype until a
    batch converts them; False decodes the Parquet shards into this process's memory."""
    task = get(ds.manifest.task)
    present = set(ds.manifest.splits)
    arrays = {sp: task.load_split(ds, sp, rank, world, mapped=mapped)
              for sp in splits if sp in present or sp not in optional}
    info = task.data_info(ds, arrays.get("train"), seed)
    return TaskData(task=task, info=info, splits=arrays, digest=ds.digest)
