"""Tests for common.brain: the brain-extraction transform with stand-in extractors, and deepbet on real volumes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common import brain
from common.brain import (
    MIN_BRAIN_VOLUME_ML,
    BrainExtractionError,
    ExtractBrainMaskd,
    check_brain_extraction,
    check_brain_mask,
    get_extractor,
    voxel_volume_ml,
)
from common.data import load_image

SHAPE = (24, 24, 12)
SOURCE = "/data/subject_01.nii.gz"
DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# ----------------------------------------------------------------------------------------------------------------------
# stand-in extractors, imported by ExtractBrainMaskd as "tests.common.test_brain:<name>"

CALLS: list[tuple[int, ...]] = []


def threshold_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The bright voxels are the brain."""
    return volume > 0.5 * float(volume.max())


def counting_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """:func:`threshold_brain` that records each call."""
    CALLS.append(volume.shape)
    return threshold_brain(volume, affine)


def empty_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Finds no brain at all."""
    return np.zeros(volume.shape, dtype=bool)


def failing_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Fails like a network on an unexpected input (a multi-line message)."""
    msg = "Traceback of the network\nRuntimeError: head bounding box is empty"
    raise RuntimeError(msg)


def cropped_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Returns a mask one slice short."""
    return threshold_brain(volume, affine)[..., :-1]


def _stand_in(name: str) -> str:
    return f"{__name__}:{name}"


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _ball(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A bright ball (radius 8 voxels in-plane, 5 axially) on a dim noisy background."""
    grids = np.meshgrid(*(np.arange(s) - (s - 1) / 2.0 for s in shape), indexing="ij")
    radii = (8.0, 8.0, 5.0)[: len(shape)]
    inside = sum((g / r) ** 2 for g, r in zip(grids, radii, strict=True)) <= 1.0
    noise = np.random.default_rng(0).random(shape)
    return (100.0 * inside + 10.0 * noise).astype(np.float32)


def _image(voxel_mm: float = 10.0, shape: tuple[int, ...] = SHAPE) -> MetaTensor:
    """A channel-first ``(1, *shape)`` MetaTensor with ``voxel_mm`` voxels and a file name."""
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = [-120.0, -120.0, -60.0]
    meta = {"filename_or_obj": SOURCE, "affine": torch.as_tensor(affine)}
    return MetaTensor(torch.from_numpy(_ball(shape))[None], meta=meta)


@pytest.fixture
def fresh_2d_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has not warned about 2D images yet."""
    monkeypatch.setattr(brain, "_warned_2d", threading.Event())


# ----------------------------------------------------------------------------------------------------------------------
# ExtractBrainMaskd


def test_transform_adds_the_mask_with_the_image_meta() -> None:
    image = _image()
    expected = threshold_brain(_ball(), np.eye(4))
    assert np.count_nonzero(expected) * 1.0 >= MIN_BRAIN_VOLUME_ML  # 1 ml voxels: a plausible brain
    out = ExtractBrainMaskd(keys="image", method=_stand_in("threshold_brain"))({"image": image, "label": 1})
    mask = out["brain_mask"]
    assert isinstance(mask, MetaTensor)
    assert tuple(mask.shape) == (1, *SHAPE) and mask.dtype == torch.float32
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(mask[0].numpy() > 0, expected)
    assert mask.meta["filename_or_obj"] == SOURCE
    np.testing.assert_allclose(np.asarray(mask.affine), np.asarray(image.affine))
    assert out["image"] is image and out["label"] == 1  # the image and other keys are untouched


def test_transform_several_keys_get_their_own_masks() -> None:
    data = {"t1": _image(), "flair": _image()}
    out = ExtractBrainMaskd(keys=["t1", "flair"], method=_stand_in("threshold_brain"), mask_key="brain")(data)
    assert {"brain_t1", "brain_flair"} <= set(out) and "brain" not in out
    assert tuple(out["brain_t1"].shape) == (1, *SHAPE)


def test_existing_mask_takes_precedence_and_is_not_recomputed() -> None:
    CALLS.clear()
    given = MetaTensor(torch.zeros(1, *SHAPE))
    transform = ExtractBrainMaskd(keys="image", method=_stand_in("counting_brain"))
    out = transform({"image": _image(), "brain_mask": given})
    assert out["brain_mask"] is given and CALLS == []
    # a None placeholder (no brain_mask/ file) is computed
    out = transform({"image": _image(), "brain_mask": None})
    assert out["brain_mask"] is not None and CALLS == [SHAPE]


def test_method_none_adds_nothing() -> None:
    data = {"image": _image()}
    out = ExtractBrainMaskd(keys="image", method="none")(data)
    assert set(out) == {"image"} and out["image"] is data["image"]


def test_2d_images_get_no_mask_and_one_warning_per_process(
    fresh_2d_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    transform = ExtractBrainMaskd(keys="image", method=_stand_in("counting_brain"))
    CALLS.clear()
    with caplog.at_level(logging.WARNING, logger="common.brain"):
        for _ in range(3):
            slice_2d = MetaTensor(torch.rand(1, 24, 24), meta={"filename_or_obj": "/data/slice.png"})
            assert "brain_mask" not in transform({"image": slice_2d})
        # another transform instance in the same run does not warn again, nor does a one-slice volume
        other = ExtractBrainMaskd(keys="image", method=_stand_in("threshold_brain"))
        assert "brain_mask" not in other({"image": torch.rand(1, 8, 8)})
        assert "brain_mask" not in other({"image": _image(shape=(24, 24, 1))})
    warnings = [r for r in caplog.records if r.name == "common.brain" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("/data/slice.png: brain extraction needs a 3D volume")
    assert CALLS == []


def test_2d_images_with_method_none_do_not_warn(fresh_2d_warning: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="common.brain"):
        ExtractBrainMaskd(keys="image", method="none")({"image": torch.rand(1, 24, 24)})
    assert not caplog.records and not brain._warned_2d.is_set()


IMPLAUSIBLE_CASES = [
    # the extractor finds nothing
    ("empty_brain", 10.0, " 0 ml of brain"),
    # a real-looking mask at 1 mm voxels is a few ml only
    ("threshold_brain", 1.0, "less than the 300 ml"),
]
IMPLAUSIBLE_IDS = ["empty-mask", "1mm-voxels"]


@pytest.mark.parametrize(("extractor", "voxel_mm", "fragment"), IMPLAUSIBLE_CASES, ids=IMPLAUSIBLE_IDS)
def test_implausible_brain_is_a_one_line_error_naming_the_file(extractor: str, voxel_mm: float, fragment: str) -> None:
    transform = ExtractBrainMaskd(keys="image", method=_stand_in(extractor))
    with pytest.raises(BrainExtractionError) as info:
        transform({"image": _image(voxel_mm)})
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: brain extraction found")
    assert "\n" not in message and fragment in message
    assert isinstance(info.value, ValueError)  # callers that skip unreadable files skip it too


def test_min_volume_is_configurable() -> None:
    transform = ExtractBrainMaskd(keys="image", method=_stand_in("threshold_brain"), min_volume_ml=1.0)
    out = transform({"image": _image(1.0)})
    assert out["brain_mask"].sum() > 0


def test_plain_tensor_is_taken_to_have_1mm_voxels_and_named_by_key() -> None:
    with pytest.raises(BrainExtractionError, match=r"^image: brain extraction found \d+ ml"):
        ExtractBrainMaskd(keys="image", method=_stand_in("threshold_brain"))({"image": torch.from_numpy(_ball())[None]})


def test_failing_extractor_raises_brain_extraction_error_naming_the_file() -> None:
    with pytest.raises(BrainExtractionError) as info:
        ExtractBrainMaskd(keys="image", method=_stand_in("failing_brain"))({"image": _image()})
    assert str(info.value) == f"{SOURCE}: brain extraction failed (RuntimeError: head bounding box is empty)"
    assert isinstance(info.value.__cause__, RuntimeError)


def test_mask_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(BrainExtractionError) as info:
        ExtractBrainMaskd(keys="image", method=_stand_in("cropped_brain"))({"image": _image()})
    assert str(info.value).startswith(f"{SOURCE}: brain extraction returned shape (24, 24, 11)")


@pytest.mark.parametrize("shape", [(2, *SHAPE), (1, 1, *SHAPE)], ids=["two-channels", "5d"])
def test_input_that_is_not_one_channel_volume_is_rejected(shape: tuple[int, ...]) -> None:
    image = MetaTensor(torch.rand(*shape), meta={"filename_or_obj": SOURCE})
    with pytest.raises(ValueError, match=r"expected a \(1, X, Y, Z\) volume"):
        ExtractBrainMaskd(keys="image", method=_stand_in("threshold_brain"))({"image": image})


# ----------------------------------------------------------------------------------------------------------------------
# settings, extractors, volumes


@pytest.mark.parametrize("method", ["deepbet", "none", "tests.common.test_brain:threshold_brain", "pkg.mod:fn"])
def test_check_brain_extraction_accepts(method: str) -> None:
    assert check_brain_extraction(method) == method


@pytest.mark.parametrize("method", ["bet", "", "Deepbet", None, 3], ids=["bet", "empty", "case", "None", "int"])
def test_check_brain_extraction_rejects(method: object) -> None:
    with pytest.raises(ValueError, match="brain_extraction must be one of"):
        check_brain_extraction(method)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="brain_extraction"):
        ExtractBrainMaskd(keys="image", method=method)  # type: ignore[arg-type]


def test_get_extractor() -> None:
    assert get_extractor("none") is None
    assert get_extractor(_stand_in("threshold_brain")) is threshold_brain
    assert get_extractor(_stand_in("threshold_brain")) is get_extractor(_stand_in("threshold_brain"))


@pytest.mark.parametrize(
    "method",
    ["no_such_package_for_uad.extractors:extract", "tests.common.test_brain:no_such_function"],
    ids=["missing-module", "missing-function"],
)
def test_get_extractor_unimportable_path(method: str) -> None:
    with pytest.raises(ValueError, match=f"brain_extraction '{method}' cannot be imported"):
        get_extractor(method)


def test_get_extractor_bad_name() -> None:
    with pytest.raises(ValueError, match="brain_extraction must be one of"):
        get_extractor("fsl-bet")


def _rotation(a: float, b: float) -> np.ndarray:
    rot_z = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return rot_z @ rot_x


VOXEL_CASES = [
    # 1 mm isotropic
    (np.eye(3), 0.001),
    # rotated, anisotropic voxels of 0.8 x 1.2 x 2.5 mm
    (_rotation(0.3, -0.2) @ np.diag([0.8, 1.2, 2.5]), 0.0024),
    # a flipped axis (LAS, negative determinant) and 2 mm voxels
    (np.diag([-2.0, 2.0, 2.0]), 0.008),
]
VOXEL_IDS = ["identity", "rotated-anisotropic", "flipped"]


@pytest.mark.parametrize(("linear", "expected"), VOXEL_CASES, ids=VOXEL_IDS)
def test_voxel_volume_ml(linear: np.ndarray, expected: float) -> None:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [-90.0, 12.0, 40.0]  # the offset does not matter
    assert voxel_volume_ml(affine) == pytest.approx(expected)
    assert voxel_volume_ml(torch.as_tensor(affine)) == pytest.approx(expected)


def test_check_brain_mask_returns_the_volume() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[:5] = True  # 500 voxels of 8 mm^3 = 4 ml
    assert check_brain_mask(mask, np.diag([2.0, 2.0, 2.0, 1.0]), "a.nii", min_volume_ml=3.9) == pytest.approx(4.0)
    with pytest.raises(BrainExtractionError, match=r"^a.nii: brain extraction found 4 ml"):
        check_brain_mask(mask, np.diag([2.0, 2.0, 2.0, 1.0]), "a.nii")


# ----------------------------------------------------------------------------------------------------------------------
# deepbet on real volumes (about 5 s per volume on the CPU)

IXI = DATA_ROOT / "ixi_t1"
BRATS = DATA_ROOT / "brats2015_volumes"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def _deepbet_masks(paths: list[Path]) -> dict[str, np.ndarray]:
    transform = ExtractBrainMaskd(keys="image", method="deepbet")
    masks = {}
    for path in paths:
        out = transform({"image": load_image(path)[None]})
        masks[path.name] = np.asarray(out["brain_mask"][0]) > 0
    return masks


@pytest.fixture(scope="module")
def ixi_masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """deepbet masks of three IXI T1 volumes and the dataset's brain masks."""
    if not (IXI / "brain_mask" / "good").is_dir():
        pytest.skip(f"{IXI} is absent (development data lives beside the repository)")
    paths = [
        p for p in sorted((IXI / "train" / "good").glob("*.nii.gz")) if (IXI / "brain_mask" / "good" / p.name).is_file()
    ]
    masks = _deepbet_masks(paths[:3])
    return {
        name: (mask, np.asarray(load_image(IXI / "brain_mask" / "good" / name)) > 0) for name, mask in masks.items()
    }


@pytest.fixture(scope="module")
def brats_masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """deepbet masks of the BraTS FLAIR test volumes (already skull-stripped) and their tumour masks."""
    paths = sorted((BRATS / "test" / "tumor").glob("*.nii.gz"))
    if not paths:
        pytest.skip(f"{BRATS} is absent (development data lives beside the repository)")
    masks = _deepbet_masks(paths)
    truth = BRATS / "ground_truth" / "tumor"
    return {name: (mask, np.asarray(load_image(truth / name)) > 0) for name, mask in masks.items()}


@pytest.mark.slow
@pytest.mark.realdata
def test_deepbet_matches_ixi_brain_masks(ixi_masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(ixi_masks) == 3
    dice = {name: _dice(mask, reference) for name, (mask, reference) in ixi_masks.items()}
    assert all(mask.shape == reference.shape for mask, reference in ixi_masks.values())
    assert min(dice.values()) >= 0.95, dice  # measured 0.978-0.983


@pytest.mark.slow
@pytest.mark.realdata
def test_deepbet_keeps_brats_tumours(brats_masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(brats_masks) == 2
    kept = {}
    for name, (mask, tumour) in brats_masks.items():
        assert mask.shape == tumour.shape and tumour.any()
        kept[name] = float(np.logical_and(mask, tumour).sum()) / float(tumour.sum())
    assert min(kept.values()) >= 0.99, kept  # measured 0.993 and 1.000
