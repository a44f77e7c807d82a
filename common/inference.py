"""Batch inference over a folder of images or NIfTI volumes.

For every input file the runner writes ``<stem>_anomaly.nii.gz`` (float32, on the input's grid), optionally
``<stem>_mask.nii.gz`` at the calibrated pixel threshold, and one ``scores.csv`` (file, slice, slice score, volume
score). A bad file is reported with its name and skipped, the rest of the batch completes, every output is written
under a temporary name and renamed, and inputs are only read.

Extra outputs: a network may also define ``forward_outputs(x)`` returning a dict of ``(B, C, H, W)`` tensors with the
anomaly map under ``"anomaly"`` and further named images (e.g. a translated healthy image under ``"healthy"``).
The runner then makes one pass per slice batch, stitches every output back onto the input's grid like the anomaly
map, and writes each extra one as ``<stem>_<name>.nii.gz`` (``<stem>_<name>_c<k>.nii.gz`` per channel when it has
several). Extra outputs are written as the network returns them (no foreground masking). Networks without the
method are run as before.

The runner is a plain loop rather than MONAI's ``SupervisedEvaluator``: an evaluator stops at the first file its
data loader cannot read, while a batch run over clinical folders must report that file and go on.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data import IMAGE_SUFFIXES, ImageRecord, file_stem
from common.distributed import gather_to_first, init_process_group, is_first_process, leave_process_group, shard
from common.io import atomic_output
from common.parallel import unwrap_network
from common.scoring import MapScorer, volume_score
from common.slice_batches import CrossFileSliceBatcher
from common.training import load_checkpoint
from common.volumes import LoadedImage, SliceSettings, load_record, select_slices, write_map

__all__ = [
    "ANOMALY_OUTPUT",
    "OUTPUTS_METHOD",
    "SCORES_HEADER",
    "AnomalyInference",
    "InferenceSummary",
    "VolumeRunner",
    "find_brain_mask",
    "has_extra_outputs",
    "list_input_files",
    "output_stems",
    "predict_volume",
    "predict_volume_outputs",
    "score_volume",
    "write_csv_atomic",
]

logger = logging.getLogger(__name__)

SKIPPED_FOLDERS = ("ground_truth", "brain_mask")
OUTPUTS_METHOD = "forward_outputs"
"""Optional network method returning ``{"anomaly": map, <name>: image, ...}`` (the extra-output protocol)."""
ANOMALY_OUTPUT = "anomaly"
_RESERVED_OUTPUTS = (ANOMALY_OUTPUT, "mask", "brain_mask")
SCORES_HEADER = ("file", "slice", "slice_score", "volume_score", "slice_anomalous", "volume_anomalous", "scored")
"""Columns of ``scores.csv``. Volume slices left out by the slice selection (too little brain) have ``scored`` 0 and
empty ``slice_score`` / ``slice_anomalous``; the volume score uses only the scored slices."""


def has_extra_outputs(network: nn.Module) -> bool:
    """Whether ``network`` implements the extra-output protocol (a callable ``forward_outputs``)."""
    model = unwrap_network(network)
    return callable(getattr(model, OUTPUTS_METHOD, None))


def list_input_files(folder: str | Path) -> list[Path]:
    """Image and NIfTI files under ``folder`` (recursively; ``ground_truth``/``brain_mask`` folders are skipped).

    Raises:
        ValueError: when ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        msg = f"{root}: input folder does not exist or is not a folder"
        raise ValueError(msg)
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).parts
        if any(part in SKIPPED_FOLDERS or part.startswith(".") for part in relative):
            continue
        if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
            files.append(path)
    return files


def output_stems(files: Sequence[Path], root: str | Path) -> list[str]:
    """The stem each input file's outputs are named with (``<stem>_anomaly.nii.gz``, ...), in the files' order.

    The file stem, unless two inputs share it (``test/good/000.png`` and ``test/crack/000.png``, as in MVTec-style
    layouts): clashing stems are prefixed with their folder path below ``root`` (``test_good_000``), then get their
    suffix (``a.nii`` and ``a.nii.gz``), then a counter. Readers of an inference folder call this with the same file
    list (:func:`list_input_files` of the same folder) to find a file's outputs.

    Args:
        files: every input file of the run, in order (the names depend on the whole list).
        root: the folder the files were listed from.
    """
    root = Path(root)
    stems = [file_stem(f) for f in files]
    names = [
        "_".join([*f.relative_to(root).parent.parts, s]) if stems.count(s) > 1 else s
        for f, s in zip(files, stems, strict=True)
    ]
    names = [
        n + f.name[len(s) :].replace(".", "_") if names.count(n) > 1 else n
        for f, s, n in zip(files, stems, names, strict=True)
    ]
    unique: list[str] = []
    for name in names:
        candidate, count = name, 1
        while candidate in unique:
            count += 1
            candidate = f"{name}_{count}"
        unique.append(candidate)
    return unique


def find_brain_mask(path: str | Path, root: str | Path) -> Path | None:
    """The ``brain_mask/`` file of an input file, when the folders around it follow the dataset layout.

    From the input's folder up to two levels above ``root``, each folder ``A`` is searched for
    ``A/brain_mask/<path below A>`` and, when the path below ``A`` starts with ``train`` or ``test``, for
    ``A/brain_mask/<class>/<name>`` (the layout of docs/design.md). So inference over ``<dataset>``, ``<dataset>/test``,
    ``<dataset>/test/<class>`` or a plain folder with a ``brain_mask/`` beside the scans finds the masks that
    training would use, and those masks take precedence over brain extraction.

    Example:
        >>> find_brain_mask("data/test/lesion/s1.nii.gz", "data/test")  # doctest: +SKIP
        PosixPath('data/brain_mask/lesion/s1.nii.gz')
    """
    path, root = Path(path), Path(root)
    top = root.parent.parent
    try:
        relative = path.relative_to(top)
    except ValueError:
        return None
    for depth in range(len(relative.parts) - 1, -1, -1):
        ancestor = top.joinpath(*relative.parts[:depth])
        below = relative.parts[depth:]
        candidates = [ancestor / "brain_mask" / Path(*below)]
        if len(below) >= 3 and below[0] in ("train", "test"):
            candidates.append(ancestor / "brain_mask" / Path(*below[1:]))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    return None


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a CSV file under a temporary name, then rename it."""
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def network_forward(network: nn.Module, extra_outputs: bool = True) -> tuple[Callable[..., Any], bool]:
    """The callable a runner feeds slices to: ``forward_outputs`` (when wanted and present) or the network itself.

    Returns:
        ``(forward, uses_outputs)``; a DDP-wrapped network is unwrapped for ``forward_outputs``.
    """
    use_outputs = extra_outputs and has_extra_outputs(network)
    model = unwrap_network(network)
    return (getattr(model, OUTPUTS_METHOD) if use_outputs else network), use_outputs


def split_outputs(raw: Any, network: nn.Module, use_outputs: bool) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The anomaly map ``(C, X, Y, Z)`` and the extra outputs (float32 numpy) of a file's stitched outputs.

    Raises:
        ValueError: when ``forward_outputs`` returned no ``"anomaly"`` entry or uses a reserved name.
    """
    if not use_outputs:
        return raw, {}
    model = unwrap_network(network)
    if not isinstance(raw, dict) or ANOMALY_OUTPUT not in raw:
        names = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        msg = f"{type(model).__name__}.{OUTPUTS_METHOD} must return a dict with {ANOMALY_OUTPUT!r}, got {names}"
        raise ValueError(msg)
    extras: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if name == ANOMALY_OUTPUT:
            continue
        if name in _RESERVED_OUTPUTS or not str(name).isidentifier():
            msg = f"extra output name {name!r} is reserved or not an identifier (reserved: {_RESERVED_OUTPUTS})"
            raise ValueError(msg)
        extras[str(name)] = value.float().cpu().numpy()
    return raw[ANOMALY_OUTPUT], extras


def predict_volume_outputs(
    network: nn.Module,
    loaded: LoadedImage,
    scorer: MapScorer,
    device: torch.device | str,
    sw_batch_size: int = 16,
    amp: bool = True,
    extra_outputs: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Anomaly maps, slice scores and the network's extra outputs for a loaded file.

    Args:
        network: a detector in eval mode mapping ``(B, 1, H, W)`` to ``(B, 1, H, W)``; with ``extra_outputs`` and a
            ``forward_outputs`` method, that method is run instead (one pass for all outputs).
        loaded: the normalised image with its foreground.
        scorer: smoothing, foreground restriction and image score.
        device: where to run.
        sw_batch_size: slices per forward pass.
        amp: bf16 autocast on CUDA.
        extra_outputs: also return the extra outputs of networks that have them.

    Returns:
        ``(maps, slice_scores, extras)``: maps of the volume's shape ``(X, Y, Z)`` (zero outside the foreground),
        one score per slice along the slicing axis, and each extra output as a float32 ``(C, X, Y, Z)`` array
        (empty when the network has none or ``extra_outputs`` is off).

    Raises:
        ValueError: when ``forward_outputs`` returns no ``"anomaly"`` entry or uses a reserved name.
    """
    forward, use_outputs = network_forward(network, extra_outputs)
    batcher = CrossFileSliceBatcher(forward, device, sw_batch_size, amp)
    (done,) = batcher.run([(0, loaded)])
    if done.error is not None:
        raise done.error
    return _maps_and_scores(done.outputs, loaded, network, use_outputs, scorer, device)


def _maps_and_scores(
    raw: Any, loaded: LoadedImage, network: nn.Module, use_outputs: bool, scorer: MapScorer, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Scored maps, slice scores and extra outputs of a file from its stitched network outputs."""
    anomaly, extras = split_outputs(raw, network, use_outputs)
    foreground = torch.from_numpy(loaded.foreground).to(device)
    maps, scores = score_volume(anomaly[0], foreground, loaded.axis, scorer)
    return maps.cpu().numpy(), scores.cpu().numpy(), extras


def score_volume(
    raw: torch.Tensor, foreground: torch.Tensor, axis: int, scorer: MapScorer
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final anomaly maps and slice scores of a volume from the network's raw maps, slice by slice.

    Args:
        raw: the stitched raw maps ``(X, Y, Z)``.
        foreground: the foreground ``(X, Y, Z)`` (boolean or 0/1).
        axis: the slicing axis.
        scorer: smoothing, foreground restriction and image score (applied to each slice).

    Returns:
        ``(maps, slice_scores)``: float maps ``(X, Y, Z)`` (zero outside the foreground) and one score per slice.
    """
    slices = raw.float().movedim(axis, 0)[:, None]
    inside = foreground.to(slices.device).movedim(axis, 0)[:, None]
    maps = scorer.maps(slices, inside)
    scores = scorer.image_scores(maps, inside)
    return maps[:, 0].movedim(0, axis), scores


def predict_volume(
    network: nn.Module,
    loaded: LoadedImage,
    scorer: MapScorer,
    device: torch.device | str,
    sw_batch_size: int = 16,
    amp: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and slice scores for a loaded file.

    Args:
        network: a detector in eval mode mapping ``(B, 1, H, W)`` to ``(B, 1, H, W)``.
        loaded: the normalised image with its foreground.
        scorer: smoothing, foreground restriction and image score.
        device: where to run.
        sw_batch_size: slices per forward pass.
        amp: bf16 autocast on CUDA.

    Returns:
        ``(maps, slice_scores)``: maps of the volume's shape ``(X, Y, Z)`` (zero outside the foreground) and one
        score per slice along the slicing axis.
    """
    maps, scores, _ = predict_volume_outputs(network, loaded, scorer, device, sw_batch_size, amp, extra_outputs=False)
    return maps, scores


@dataclass
class InferenceSummary:
    """What a batch run did: the files written, the per-slice score rows and the files that failed."""

    written: list[Path] = field(default_factory=list)
    rows: list[list[object]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class VolumeRunner:
    """What batch inference and evaluation share: a loaded detector run slice-wise over files.

    Args:
        network: the detector (its ``calibration`` holds the thresholds after loading ``model.pt``).
        dataset_dir: input folder.
        output_dir: where outputs go.
        slice_settings: slicing and normalisation (should match training; a mismatch is logged).
        scorer: how maps become slice scores (should match training).
        device: where to run.
        checkpoint: ``model.pt`` to load, or ``None`` when the network is already loaded.
        sw_batch_size: slices per forward pass.
        volume_method: how slice scores become a volume score (``"max"`` or ``"mean"``).
        amp: bf16 autocast on CUDA.
        channels_last: run the network in ``channels_last`` on CUDA.
        compile: run the network through ``torch.compile`` (the first batches of each input shape compile it).
        loader_workers: threads reading and normalising files ahead of the network.
        prefetch: files read ahead at most (loaded files waiting for the network); default ``loader_workers + 1``.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset_dir: str | Path,
        output_dir: str | Path,
        slice_settings: SliceSettings,
        scorer: MapScorer,
        device: torch.device | str = "cpu",
        checkpoint: str | Path | None = None,
        sw_batch_size: int = 16,
        volume_method: str = "max",
        amp: bool = True,
        channels_last: bool = True,
        compile: bool = False,  # noqa: A002 - the config key users know from torch.compile
        loader_workers: int = 1,
        prefetch: int | None = None,
    ) -> None:
        if loader_workers < 1:
            msg = f"loader_workers must be >= 1, got {loader_workers}"
            raise ValueError(msg)
        if prefetch is not None and prefetch < 1:
            msg = f"prefetch must be >= 1, got {prefetch}"
            raise ValueError(msg)
        self.network = network
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.slice_settings = slice_settings
        self.scorer = scorer
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.sw_batch_size = sw_batch_size
        self.volume_method = volume_method
        self.amp = amp
        self.channels_last = channels_last
        self.compile = compile
        self.loader_workers = int(loader_workers)
        self.prefetch = int(prefetch) if prefetch is not None else self.loader_workers + 1
        volume_score([0.0], volume_method)  # validates the method name now, not after the first volume

    @property
    def thresholds(self) -> tuple[float, float] | None:
        """``(pixel_threshold, image_threshold)`` calibrated during training, or ``None``."""
        calibration = getattr(self.network, "calibration", None)
        if calibration is None or not calibration.calibrated:
            return None
        return float(calibration.pixel_threshold), float(calibration.image_threshold)

    def prepare(self) -> None:
        """Load the checkpoint (if any), move the network to the device, switch to eval mode, compare settings."""
        if self.checkpoint is not None:
            load_checkpoint(self.network, self.checkpoint)
        self.network.to(self.device).eval()
        if self.device.type == "cuda" and self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        stored = getattr(getattr(self.network, "calibration", None), "settings", {}).get("preprocessing", {})
        trained = stored.get("slices") if isinstance(stored, dict) else None
        current = self.slice_settings.as_dict()
        # Keys added after a checkpoint was written are absent from its stored settings: compare the shared ones.
        differing = sorted(key for key in (trained or {}) if key in current and trained[key] != current[key])
        if differing:
            logger.warning(
                "slice settings differ from training in %s: trained with %s, running with %s",
                ", ".join(differing),
                {key: trained[key] for key in differing},
                {key: current[key] for key in differing},
            )

    def predict(self, loaded: LoadedImage) -> tuple[np.ndarray, np.ndarray, list[int], float]:
        """Maps, slice scores, the scored slice indices and the volume score of a loaded file."""
        maps, scores, selected, vol_score, _ = self.predict_outputs(loaded, extra_outputs=False)
        return maps, scores, selected, vol_score

    def predict_outputs(
        self, loaded: LoadedImage, extra_outputs: bool = True
    ) -> tuple[np.ndarray, np.ndarray, list[int], float, dict[str, np.ndarray]]:
        """As :meth:`predict`, plus the network's extra outputs (``{name: (C, X, Y, Z)}``, see the module doc).

        Slices that :func:`common.volumes.select_slices` leaves out (too little brain, outside the slice range) get a
        zero map; their scores are returned but take no part in the volume score.
        """
        ((_, _, prediction),) = self.predict_files([(0, loaded)], extra_outputs)
        if isinstance(prediction, BaseException):
            raise prediction
        return prediction

    def load_files(self, records: Sequence[ImageRecord]) -> Iterator[tuple[ImageRecord, LoadedImage | Exception]]:
        """Load and normalise ``records`` in order, ``loader_workers`` threads reading up to ``prefetch`` ahead.

        A file that cannot be loaded comes back as its exception, in its place.
        """
        with ThreadPoolExecutor(max_workers=self.loader_workers) as pool:
            ahead: list[Future] = []
            for i, record in enumerate(records):
                while len(ahead) < self.prefetch and i + len(ahead) < len(records):
                    ahead.append(pool.submit(load_record, records[i + len(ahead)], self.slice_settings))
                future = ahead.pop(0)
                try:
                    yield record, future.result()
                except Exception as error:  # reported per file; the batch goes on
                    yield record, error

    def predict_files(
        self, items: Iterable[tuple[Any, LoadedImage | Exception]], extra_outputs: bool = True
    ) -> Iterator[tuple[Any, LoadedImage | Exception, tuple | Exception]]:
        """Predict a stream of loaded files, batching slices across files (:mod:`common.slice_batches`).

        Args:
            items: ``(key, loaded file or the exception its loading raised)`` pairs.
            extra_outputs: also return the network's extra outputs.

        Yields:
            ``(key, loaded, prediction)`` in input order; ``prediction`` is :meth:`predict_outputs`' tuple, or the
            exception that stopped the file (its loading, its forward pass or its scoring).
        """
        forward, use_outputs = network_forward(self.network, extra_outputs)
        if self.compile:
            forward = self._compiled(forward)
        batcher = CrossFileSliceBatcher(
            forward, self.device, self.sw_batch_size, self.amp, channels_last=self.channels_last
        )
        for done in batcher.run(items):
            if done.error is not None:
                yield done.key, done.item, done.error
                continue
            loaded = done.item
            try:
                maps, scores, extras = _maps_and_scores(
                    done.outputs, loaded, self.network, use_outputs, self.scorer, self.device
                )
            except Exception as error:  # reported per file; the batch goes on
                yield done.key, loaded, error
                continue
            selected = select_slices(loaded, self.slice_settings) or list(range(loaded.n_slices))
            not_scored = np.setdiff1d(np.arange(loaded.n_slices), selected)
            if not_scored.size:  # slices with too little brain: map 0, no score (docs/design.md)
                index: list[Any] = [slice(None)] * maps.ndim
                index[loaded.axis] = not_scored
                maps[tuple(index)] = 0.0
            yield done.key, loaded, (maps, scores, selected, volume_score(scores[selected], self.volume_method), extras)

    def _compiled(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` through ``torch.compile``, built once per runner."""
        if getattr(self, "_compiled_forward", None) is None or self._compiled_source != forward:
            self._compiled_source = forward
            self._compiled_forward = torch.compile(forward)
        return self._compiled_forward


class AnomalyInference(VolumeRunner):
    """Batch inference of a trained detector over a folder (any folder of images or NIfTI volumes).

    Args:
        write_masks: also write ``<stem>_mask.nii.gz`` at the calibrated pixel threshold.
        write_brain_masks: also write ``<stem>_brain_mask.nii.gz``, the brain mask the maps are restricted to, for
            files whose foreground is a brain mask (a ``brain_mask/`` file or an extraction).
        write_extra_outputs: also write the network's extra outputs, ``<stem>_<name>.nii.gz`` (networks with a
            ``forward_outputs`` method only; see the module doc).
        **kwargs: the arguments of :class:`VolumeRunner`.
    """

    def __init__(
        self,
        *args: Any,
        write_masks: bool = True,
        write_brain_masks: bool = True,
        write_extra_outputs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.write_masks = write_masks
        self.write_brain_masks = write_brain_masks
        self.write_extra_outputs = write_extra_outputs

    def _write_extras(self, extras: dict[str, np.ndarray], path: Path, stem: str, is_volume: bool) -> list[Path]:
        """Write each extra output on the input's grid; one file per channel when it has several."""
        written = []
        for name, value in extras.items():
            for channel, array in enumerate(value):
                suffix = name if len(value) == 1 else f"{name}_c{channel}"
                out = array if is_volume else array[..., 0]
                written.append(write_map(out, path, self.output_dir / f"{stem}_{suffix}.nii.gz"))
        return written

    def _record(self, path: Path) -> ImageRecord:
        return ImageRecord(path, foreground=find_brain_mask(path, self.dataset_dir))

    @staticmethod
    def _score_rows(
        path: Path,
        loaded: LoadedImage,
        scores: np.ndarray,
        selected: Sequence[int],
        vol_score: float,
        thresholds: tuple[float, float] | None,
    ) -> list[list[object]]:
        """``scores.csv`` rows of one file: every slice of a volume, those not scored with empty scores."""
        rows: list[list[object]] = []
        chosen = set(selected)
        volume_flag = "" if thresholds is None else int(vol_score > thresholds[1])
        for index in range(loaded.n_slices) if loaded.is_volume else selected:
            slice_index = index if loaded.is_volume else ""
            if index in chosen:
                slice_flag = "" if thresholds is None else int(scores[index] > thresholds[1])
                rows.append(
                    [str(path), slice_index, f"{scores[index]:.6g}", f"{vol_score:.6g}", slice_flag, volume_flag, 1]
                )
            else:
                rows.append([str(path), slice_index, "", f"{vol_score:.6g}", "", volume_flag, 0])
        return rows

    def _write_file(
        self, path: Path, stem: str, loaded: LoadedImage, prediction: tuple
    ) -> tuple[list[Path], list[list[object]]]:
        """Write one file's maps (and masks, brain mask, extra outputs); returns the files and its score rows."""
        maps, scores, selected, vol_score, extras = prediction
        thresholds = self.thresholds
        out_maps = maps if loaded.is_volume else maps[..., 0]
        written = [write_map(out_maps, path, self.output_dir / f"{stem}_anomaly.nii.gz")]
        if self.write_masks and thresholds is not None:
            mask = (out_maps > thresholds[0]).astype(np.float32)
            written.append(write_map(mask, path, self.output_dir / f"{stem}_mask.nii.gz"))
        if self.write_brain_masks and loaded.is_brain_mask:
            brain = loaded.foreground.astype(np.float32)
            out_brain = brain if loaded.is_volume else brain[..., 0]
            written.append(write_map(out_brain, path, self.output_dir / f"{stem}_brain_mask.nii.gz"))
        written.extend(self._write_extras(extras, path, stem, loaded.is_volume))
        logger.info("%s: volume score %.4g -> %s", path.name, vol_score, written[0])
        return written, self._score_rows(path, loaded, scores, selected, vol_score, thresholds)

    @staticmethod
    def _report_failure(path: Path, error: BaseException, failed: dict[int, tuple[str, str]], index: int) -> None:
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        logger.error("skipped %s", message)
        failed[index] = (str(path), message)

    def _collect(
        self,
        index: int,
        future: Future,
        files: Sequence[Path],
        done: dict[int, tuple[list[Path], list[list[object]]]],
        failed: dict[int, tuple[str, str]],
    ) -> None:
        """Wait for one file's writing; record its outputs, or its failure (one bad file must not stop the batch)."""
        try:
            done[index] = future.result()
        except Exception as error:
            self._report_failure(files[index], error, failed, index)

    def run(self) -> InferenceSummary:
        """Process every file; returns the summary and writes ``scores.csv`` (and ``failed.csv`` when needed).

        Under ``torchrun`` each process takes every ``world_size``-th file (:mod:`common.distributed`) and rank 0
        merges the score rows and failures in the files' order, so the outputs equal a one-process run's; the
        returned summary is the merged one on rank 0 and the process's own share elsewhere.
        """
        joined = init_process_group(self.device)
        try:
            return self._run_share()
        finally:
            leave_process_group(joined)

    def _run_share(self) -> InferenceSummary:
        self.prepare()
        thresholds = self.thresholds
        if self.write_masks and thresholds is None:
            logger.warning("the model holds no calibrated thresholds; no masks will be written")
        files = list_input_files(self.dataset_dir)
        if not files and is_first_process():
            logger.warning("%s: no image or NIfTI files found", self.dataset_dir)
        stems = output_stems(files, self.dataset_dir)  # from the whole list, so every process names its files alike
        mine = shard(files)
        done: dict[int, tuple[list[Path], list[list[object]]]] = {}
        failed: dict[int, tuple[str, str]] = {}
        loaded_files = (
            (index, loaded)
            for index, (_, loaded) in zip(mine, self.load_files([self._record(files[i]) for i in mine]), strict=True)
        )
        # Outputs are compressed and written by a writer thread while the network runs on the next files; at most
        # ``prefetch`` files wait to be written.
        with ThreadPoolExecutor(max_workers=1) as writer:
            writing: list[tuple[int, Future]] = []
            for index, loaded, prediction in self.predict_files(loaded_files, self.write_extra_outputs):
                if isinstance(prediction, BaseException):
                    self._report_failure(files[index], prediction, failed, index)
                    continue
                writing.append((index, writer.submit(self._write_file, files[index], stems[index], loaded, prediction)))
                while len(writing) > self.prefetch:
                    self._collect(*writing.pop(0), files, done, failed)
            for index, future in writing:
                self._collect(index, future, files, done, failed)
        shares = gather_to_first((done, failed))
        if shares is None:  # not rank 0: rank 0 writes the tables
            return _summary(done, failed)
        all_done = {i: result for share_done, _ in shares for i, result in share_done.items()}
        all_failed = {i: failure for _, share_failed in shares for i, failure in share_failed.items()}
        summary = _summary(all_done, all_failed)
        write_csv_atomic(self.output_dir / "scores.csv", SCORES_HEADER, summary.rows)
        if summary.failed:
            write_csv_atomic(self.output_dir / "failed.csv", ["file", "error"], summary.failed)
        logger.info(
            "inference done: %d files processed, %d failed; outputs in %s",
            len(files) - len(summary.failed),
            len(summary.failed),
            self.output_dir,
        )
        return summary


def _summary(
    done: dict[int, tuple[list[Path], list[list[object]]]], failed: dict[int, tuple[str, str]]
) -> InferenceSummary:
    """An :class:`InferenceSummary` with the files in their input order (the keys are positions in the file list)."""
    summary = InferenceSummary()
    for index in sorted(done):
        written, rows = done[index]
        summary.written.extend(written)
        summary.rows.extend(rows)
    summary.failed.extend(failed[index] for index in sorted(failed))
    return summary
