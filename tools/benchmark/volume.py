"""One NIfTI volume through the bundle's inference: brain extraction alone, then read → maps → write end to end.

The volume is a real one or a synthetic one (:data:`DEFAULT_VOLUME_SHAPE`, the BraTS grid); :func:`time_volume`
makes the calls the bundle's batch inference makes (:func:`common.volumes.load_record`,
:func:`common.inference.predict_volume`, :func:`common.volumes.write_map`) and times each step.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from common.brain import BrainExtractionError, ExtractBrainMaskd, get_extractor, voxel_volume_ml
from common.data import ImageRecord, is_nifti, load_image
from common.inference import predict_volume
from common.scoring import volume_score
from common.volumes import load_record, select_slices, write_map
from tools.benchmark.memory import PeakMemory
from tools.phantoms import make_volume, volume_affine

__all__ = ["DEFAULT_VOLUME_SHAPE", "time_volume", "volume_file_shape"]

DEFAULT_VOLUME_SHAPE: tuple[int, int, int] = (240, 240, 155)
"""The BraTS grid: 240 x 240 in-plane, 155 axial slices, 1 mm isotropic."""

_PHANTOM_MIN_SHAPE = (32, 32, 8)  # smallest volume tools.phantoms.make_volume renders


def _synthetic_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A float32 test volume of ``shape``.

    A brain phantom (:func:`tools.phantoms.make_volume`) where the shape allows one, else a smoothed-noise ellipsoid
    on a dark background.
    """
    rng = np.random.default_rng(seed)
    if all(s >= m for s, m in zip(shape, _PHANTOM_MIN_SHAPE, strict=True)):
        return make_volume(rng, shape)[0].astype(np.float32)
    grids = np.meshgrid(*(np.linspace(-1.0, 1.0, s) for s in shape), indexing="ij")
    inside = sum(g**2 for g in grids) < 0.8
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return (inside * (0.6 + 0.1 * texture) + 0.02 * rng.random(shape)).astype(np.float32)


def volume_file_shape(path: Path) -> tuple[int, int, int]:
    """The ``(X, Y, Z)`` shape of a 3D NIfTI volume (trailing singleton axes dropped), from its header.

    Args:
        path: the ``--volume`` file.

    Returns:
        Its shape.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: for a file that is not a readable 3D NIfTI volume (``.nii`` or ``.nii.gz``).
    """
    if not path.is_file():
        msg = f"{path}: --volume not found"
        raise FileNotFoundError(msg)
    if not is_nifti(path):
        msg = f"{path}: --volume must be a 3D NIfTI volume (.nii or .nii.gz)"
        raise ValueError(msg)
    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as error:  # nibabel raises several exception types for damaged files
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        msg = f"{path}: cannot be read as NIfTI ({reason[:200]})"
        raise ValueError(msg) from error
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        msg = f"{path}: --volume must be a 3D volume, got shape {shape}"
        raise ValueError(msg)
    return shape[0], shape[1], shape[2]


def _time_brain_extraction(source: Path, slice_settings: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Seconds per volume of :class:`common.brain.ExtractBrainMaskd` on ``source``, after one warm-up call.

    Returns:
        ``(result, memory)``: ``result`` has ``method``, ``measured``, ``s_per_volume`` (``None`` when not measured),
        ``first_call_s`` (the warm-up call, which loads the networks), ``brain_volume_ml``, ``device`` and ``reason``
        (why it was not measured); ``memory`` is the peak memory of the timed call, or ``None``.
    """
    method = str(getattr(slice_settings, "brain_extraction", "none"))
    foreground = str(getattr(slice_settings, "foreground", "auto"))
    result: dict[str, Any] = {
        "method": method,
        "measured": False,
        "s_per_volume": None,
        "first_call_s": None,
        "brain_volume_ml": None,
        "device": None,
        "reason": None,
    }
    if method == "none":
        result["reason"] = "brain_extraction is 'none': the bundle does not extract brains"
        return result, None
    if foreground != "auto":
        result["reason"] = f"foreground is {foreground!r}: brain extraction runs in the 'auto' foreground mode only"
        return result, None
    extractor = get_extractor(method)
    use_gpu = bool(getattr(extractor, "use_gpu", False))
    extraction_device = torch.device("cuda" if use_gpu else "cpu")
    result["device"] = str(extraction_device)
    transform = ExtractBrainMaskd(keys="image", method=method)
    image = load_image(source)[None]
    try:
        start = time.perf_counter()
        transform({"image": image})
        result["first_call_s"] = time.perf_counter() - start
        with PeakMemory(extraction_device) as memory:
            start = time.perf_counter()
            out = transform({"image": image})
            seconds = time.perf_counter() - start
    except BrainExtractionError as error:
        result["reason"] = str(error)
        return result, None
    if out.get("brain_mask") is None:  # not reached for 3D volumes; kept for extractors that return nothing
        result["reason"] = "the extractor returned no brain mask"
        return result, None
    mask = np.asarray(out["brain_mask"][0]) > 0
    result.update(
        measured=True,
        s_per_volume=seconds,
        brain_volume_ml=float(mask.sum()) * voxel_volume_ml(getattr(image, "affine", np.eye(4))),
    )
    return result, memory.result


def time_volume(
    network: nn.Module,
    scorer: Any,
    slice_settings: Any,
    device: torch.device,
    batch_size: int,
    amp: bool,
    volume_shape: tuple[int, int, int],
    seed: int,
    volume: Path | None = None,
    volume_method: str = "max",
    write_masks: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Brain extraction alone, then read → extract → normalise → maps → write for one volume (real or synthetic).

    The brain extraction of ``slice_settings`` is timed on its own first, after one warm-up call that loads the
    networks; it is then part of the read when it was measured. When the extractor rejects the volume (a synthetic
    one may look implausible), that is reported, not raised, and the volume runs without extraction.

    Args:
        network: the bundle's network, on ``device`` in eval mode.
        scorer: the bundle's ``scorer``.
        slice_settings: the bundle's ``slice_settings`` (slice axis, foreground, brain extraction).
        device: where the maps are computed.
        batch_size: slices per forward pass.
        amp: the bundle's autocast setting, passed to :func:`common.inference.predict_volume`.
        volume_shape: ``(X, Y, Z)`` of the synthetic volume; the shape of ``volume`` when one is given.
        seed: seed of the synthetic volume.
        volume: a real 3D NIfTI volume; ``None``: a synthetic one (a brain phantom where the shape allows one).
        volume_method: how slice scores make the volume score (the evaluator's ``volume_method``).
        write_masks: also write the thresholded map, as the bundle does when its network is calibrated.

    Returns:
        ``(end_to_end, brain_extraction, brain_extraction_memory)``: the seconds of each step, the slice counts and
        the peak memory (``end_to_end["memory"]``); the brain extraction's ``method``, ``measured``,
        ``s_per_volume``, ``first_call_s``, ``brain_volume_ml``, ``device``, ``included_in_end_to_end`` and
        ``reason`` (why it was not measured); and the peak memory of the timed extraction, ``None`` when not
        measured.
    """
    calibration = getattr(network, "calibration", None)
    calibrated = calibration is not None and bool(calibration.calibrated)
    with tempfile.TemporaryDirectory(prefix="uad-benchmark-") as tmp:
        if volume is None:
            source = Path(tmp) / "volume.nii.gz"
            nib.save(nib.Nifti1Image(_synthetic_volume(volume_shape, seed), volume_affine(volume_shape)), str(source))
        else:
            source = volume
        extraction, extraction_memory = _time_brain_extraction(source, slice_settings)
        extraction["included_in_end_to_end"] = bool(extraction["measured"])
        if not extraction["measured"] and extraction["method"] != "none" and dataclasses.is_dataclass(slice_settings):
            # the extractor rejected this volume: time the rest of the pipeline without it
            slice_settings = dataclasses.replace(slice_settings, brain_extraction="none")
        out_dir = Path(tmp) / "out"
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            loaded = load_record(ImageRecord(source), slice_settings)
            read = time.perf_counter()
            maps, scores = predict_volume(network, loaded, scorer, device, batch_size, amp)
            selected = select_slices(loaded, slice_settings) or list(range(loaded.n_slices))
            volume_score(scores[selected], volume_method)
            mapped = time.perf_counter()
            write_map(maps, source, out_dir / "volume_anomaly.nii.gz")
            if write_masks and calibrated:
                mask = (maps > float(calibration.pixel_threshold)).astype(np.float32)
                write_map(mask, source, out_dir / "volume_mask.nii.gz")
            end = time.perf_counter()
    total = end - start
    if volume is not None:
        volume_source = str(volume)
    elif all(s >= m for s, m in zip(volume_shape, _PHANTOM_MIN_SHAPE, strict=True)):
        volume_source = "tools.phantoms.make_volume"
    else:
        volume_source = "smoothed-noise ellipsoid"
    end_to_end = {
        "volume_shape": list(volume_shape),
        "volume_source": volume_source,
        "n_slices": int(loaded.n_slices),
        "n_scored_slices": len(selected),
        "read_normalise_s": read - start,
        "maps_s": mapped - read,
        "write_s": end - mapped,
        "total_s": total,
        "slices_per_s": loaded.n_slices / total if total > 0 else float("inf"),
        "masks_written": write_masks and calibrated,
        "brain_extraction": extraction["method"],
        "brain_extraction_s_per_volume": extraction["s_per_volume"],
        "brain_extraction_in_total": extraction["included_in_end_to_end"],
        "foreground_source": loaded.foreground_source,
        "memory": memory.result,
    }
    return end_to_end, extraction, extraction_memory
