"""Read a bundle's written inference outputs back: per-slice labels, scores, maps and ground truth.

The bundle's ``inference.json`` writes ``<stem>_anomaly.nii.gz`` (on the input's grid) and ``scores.csv`` (file,
slice, slice score) for every test file. This module pairs them with the dataset's ground truth
(:func:`common.data.discover_dataset`) the way :class:`common.evaluation.AnomalyEvaluation` labels slices: a slice
is abnormal when its mask slice has an anomalous pixel; a file without a mask takes its folder's label and, when
normal, counts as an all-normal mask.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data import ImageRecord, discover_dataset, file_stem, load_image
from common.inference import list_input_files, output_stems

__all__ = ["SlicePredictions", "load_predictions", "read_scores_csv"]


@dataclass
class SlicePredictions:
    """Per-slice outputs of one model on a test set, in ``scores.csv`` order.

    Attributes:
        keys: ``(file, slice index)`` per slice (slice 0 for 2D images).
        labels: 0/1 per slice.
        scores: slice score per slice.
        maps: anomaly map per slice, ``(X, Y)``.
        masks: boolean ground truth per slice, ``None`` for an abnormal file without a mask.
        records: the test records by resolved file path.
        axis: the slicing axis of 3D volumes.
    """

    keys: list[tuple[str, int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    records: dict[str, ImageRecord] = field(default_factory=dict)
    axis: int = 2

    def append(
        self, record: ImageRecord, slice_index: int, score: float, slice_map: np.ndarray, mask: np.ndarray | None
    ) -> None:
        """Add one slice; its label comes from its mask slice, else from its file's folder.

        As :class:`common.evaluation.AnomalyEvaluation` labels slices: a slice is abnormal when its mask slice has an
        anomalous pixel; a file without a mask takes its folder's label and, when normal, counts as an all-normal
        mask (an abnormal file without a mask keeps ``None``: it has no pixel ground truth).
        """
        label = int(mask.any()) if mask is not None else int(record.label)
        if mask is None and not record.label:
            mask = np.zeros(slice_map.shape, dtype=bool)
        self.keys.append((str(record.image.resolve()), slice_index))
        self.labels.append(label)
        self.scores.append(score)
        self.maps.append(slice_map)
        self.masks.append(mask)

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Flattened ground truth and map values of every slice with ground truth (empty arrays if none)."""
        with_gt = [i for i, m in enumerate(self.masks) if m is not None]
        if not with_gt:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float32)
        return (
            np.concatenate([self.masks[i].ravel() for i in with_gt]),
            np.concatenate([self.maps[i].ravel() for i in with_gt]),
        )

    def image_slice(self, index: int) -> np.ndarray:
        """The raw input intensities of slice ``index`` (for figures)."""
        file, slice_index = self.keys[index]
        return _slice(np.asarray(load_image(file), dtype=np.float32), slice_index, self.axis)


def _slice(array: np.ndarray, index: int, axis: int) -> np.ndarray:
    return array if array.ndim == 2 else np.take(array, index, axis=axis)


def read_scores_csv(path: str | Path) -> list[tuple[str, int, float]]:
    """``(file, slice, slice score)`` rows of a bundle's ``scores.csv`` (slice 0 for 2D images), scored slices only.

    Rows marked ``scored`` 0 (slices with too little brain) carry no score and are left out.

    Raises:
        ValueError: when the file is missing or lacks the ``file``, ``slice`` and ``slice_score`` columns.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: scores.csv not found (did the inference run?)"
        raise ValueError(msg)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "slice", "slice_score"} - set(reader.fieldnames or ())
        if missing:
            msg = f"{path}: missing columns {sorted(missing)}; got {reader.fieldnames}"
            raise ValueError(msg)
        return [
            (row["file"], int(row["slice"] or 0), float(row["slice_score"]))
            for row in reader
            if row.get("scored", "1") != "0"
        ]


def load_predictions(maps_dir: str | Path, dataset_dir: str | Path, axis: int = 2) -> SlicePredictions:
    """Pair the maps and scores in ``maps_dir`` with the test records and masks of ``dataset_dir``.

    Args:
        maps_dir: an inference output folder (``scores.csv``, ``<stem>_anomaly.nii.gz``).
        dataset_dir: the dataset root (``test/``, ``ground_truth/``).
        axis: the slicing axis the model used for 3D volumes.

    Raises:
        ValueError: when a scored file is not a test file of the dataset or its map is missing.
    """
    maps_dir = Path(maps_dir)
    records = {str(r.image.resolve()): r for r in discover_dataset(dataset_dir, require_test=True).test}
    # the names inference gives each file's outputs when it runs over <dataset>/test (tools.compare.runner)
    inputs = list_input_files(Path(dataset_dir) / "test")
    stems = {
        str(f.resolve()): stem for f, stem in zip(inputs, output_stems(inputs, Path(dataset_dir) / "test"), strict=True)
    }
    out = SlicePredictions(records=records, axis=axis)
    cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for file, slice_index, score in read_scores_csv(maps_dir / "scores.csv"):
        key = str(Path(file).resolve())
        record = records.get(key)
        if record is None:
            msg = f"{maps_dir / 'scores.csv'}: {file} is not a test file of {dataset_dir}"
            raise ValueError(msg)
        if key not in cache:
            # the name from a run over <dataset>/test, else the plain stem (a run over one class folder)
            names = dict.fromkeys([stems.get(key, file_stem(record.image)), file_stem(record.image)])
            candidates = [maps_dir / f"{name}_anomaly.nii.gz" for name in names]
            map_file = next((f for f in candidates if f.is_file()), None)
            if map_file is None:
                msg = f"{candidates[0]}: anomaly map of {file} not found"
                raise ValueError(msg)
            mask = np.asarray(load_image(record.mask)) > 0 if record.mask is not None else None
            cache = {key: (np.asarray(nib.load(str(map_file)).get_fdata(dtype=np.float32)), mask)}
        volume_map, volume_mask = cache[key]
        mask = _slice(volume_mask, slice_index, axis) if volume_mask is not None else None
        out.append(record, slice_index, score, _slice(volume_map, slice_index, axis), mask)
    if not out.keys:
        msg = f"{maps_dir / 'scores.csv'}: no scored slice"
        raise ValueError(msg)
    return out
