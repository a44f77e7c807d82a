"""``common.transforms``: the single-study MONAI dict transforms (the MONAI Label path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.scoring import MapScorer
from common.transforms import AnomalyMapd, NormalizeVolumed, pixel_threshold
from common.volumes import SliceSettings, normalize_with_foreground


def _volume() -> MetaTensor:
    image = torch.zeros(1, 24, 24, 6)
    image[:, 4:20, 4:20] = torch.rand(16, 16, 6) * 100 + 50
    return MetaTensor(image, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))


def test_normalize_volumed_matches_the_batch_normalisation_and_keeps_the_grid():
    volume = _volume()
    out = NormalizeVolumed("image", {"foreground": "compute"})({"image": volume})
    image, foreground = normalize_with_foreground(volume[0], SliceSettings(foreground="compute"), True)
    np.testing.assert_array_equal(out["image"][0].numpy(), image)
    np.testing.assert_array_equal(out["foreground"][0].numpy(), foreground.astype(np.float32))
    assert out["image"].shape == volume.shape
    np.testing.assert_array_equal(out["foreground"].affine, volume.affine)


def test_anomaly_mapd_zeroes_the_background_and_handles_2d_images():
    pred = torch.rand(1, 24, 24, 6)
    foreground = torch.zeros(1, 24, 24, 6)
    foreground[:, 8:16] = 1
    out = AnomalyMapd("pred", MapScorer())({"pred": pred, "foreground": foreground})["pred"]
    assert out.shape == pred.shape
    assert (out[foreground == 0] == 0).all()
    torch.testing.assert_close(out[foreground > 0], pred[foreground > 0])
    image = AnomalyMapd("pred", MapScorer(smoothing_sigma=1.0))({"pred": torch.rand(1, 24, 24)})["pred"]
    assert image.shape == (1, 24, 24)


@pytest.mark.parametrize("shape", [(24, 24, 6), (2, 24, 24, 6)], ids=["no-channel", "two-channels"])
def test_bad_shapes_are_clear_errors(shape):
    with pytest.raises(ValueError, match=r"'image' must be \(1, X, Y\) or \(1, X, Y, Z\)"):
        NormalizeVolumed("image")({"image": torch.rand(shape)})
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        AnomalyMapd("pred", MapScorer(), axis=3)


def test_pixel_threshold_reads_the_calibration(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(
        {"model": {"calibration.pixel_threshold": torch.tensor(0.5), "calibration.image_threshold": torch.tensor(1.0)}},
        path,
    )
    assert pixel_threshold(path) == 0.5
    with pytest.raises(FileNotFoundError, match="train first"):
        pixel_threshold(tmp_path / "missing.pt")
