"""Every bundle's MONAI Label path (``preprocessing`` → ``inferer`` → ``postprocessing`` of ``inference.json``, run
the way MONAI Label's ``BundleInferTask`` runs it) gives the batch inference's anomaly map and mask on the input grid.

Untrained tiny networks with a calibration set by hand keep this fast; the trained path through a real MONAI Label
server is in ``tests/integration/test_monailabel.py``. The checkpoint describes its network as training writes it
(:mod:`common.checkpoint`), so the configs are given no architecture; one case keeps a checkpoint written before
descriptions existed, which needs the architecture repeated.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from common.checkpoint import DESCRIPTION_KEY, NetworkDescription
from common.training import load_checkpoint, load_thresholds
from tests.bundles import contract
from tests.bundles.conftest import REPO_ROOT
from tests.comparisons import assert_maps_close, assert_masks_agree_off_threshold
from tools.components import bundle_scripts_on_path

TINY = {
    "ms_nf": {"image_size": [64, 64], "n_blocks": 2, "hidden_channels": 16},
    "dnfad": {"image_size": [64, 64], "n_blocks": 2, "hidden_channels": 16, "pixel_hidden_channels": 16},
    "skip_ts": {"image_size": [64, 64]},
    "anomalypro": {"image_size": [32, 32], "channels": 8, "n_res": 1},
}


def _parser(bundle: str, overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(contract.configs_dir(bundle) / "inference.json"))
    parser.update({"bundle_root": str(REPO_ROOT / "bundles" / bundle), "device": "$torch.device('cpu')", **overrides})
    return parser


def _write_head_sized(source: Path, out: Path) -> Path:
    """The phantom with 3x larger voxels, so its extracted brain has a plausible size (over 300 ml)."""
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine @ np.diag([3.0, 3.0, 3.0, 1.0])), out)
    return out


def _write_calibrated(network: torch.nn.Module, path: Path, pixel_threshold: float, bundle: str | None) -> None:
    """Save ``{"model": ...}`` with the network's description of ``bundle`` (as training does), or without (``None``:
    a checkpoint written before descriptions existed)."""
    network.calibration.set_thresholds(pixel_threshold, 1.0)
    saved = {"model": network.state_dict()}
    if bundle is not None:
        saved[DESCRIPTION_KEY] = NetworkDescription(network, REPO_ROOT / "bundles" / bundle).state_dict()
    torch.save(saved, path)


CASES = [(bundle, True) for bundle in sorted(TINY)] + [("ms_nf", False)]


@pytest.mark.parametrize(("bundle", "described"), CASES, ids=[f"{b}-{'described' if d else 'old'}" for b, d in CASES])
def test_label_pipeline_matches_batch_inference(bundle, described, phantoms_3d, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume = _write_head_sized(sorted((phantoms_3d / "test" / "lesion").glob("*.nii.gz"))[0], inputs / "case.nii.gz")
    checkpoint = tmp_path / "model.pt"
    overrides = {
        # a described checkpoint gives the architecture; an old one needs it repeated
        **({} if described else TINY[bundle]),
        # brain extraction on, through the same transform as deepbet, with a fast stand-in extractor
        "brain_extraction": "tests.stand_ins:threshold_brain",
        "ckpt_path": str(checkpoint),
        "dataset_dir": str(inputs),
        "output_dir": str(tmp_path / "out"),
        "amp": False,
    }
    with bundle_scripts_on_path(REPO_ROOT / "bundles" / bundle):
        # the tiny network, built before its checkpoint exists (as training builds it)
        network = _parser(bundle, {**overrides, **TINY[bundle]}).get_parsed_content("network_def").eval()
        saved_as = bundle if described else None
        _write_calibrated(network, checkpoint, 0.0, saved_as)
        parser = _parser(bundle, overrides)
        parser.get_parsed_content("evaluator").run()
        batch_map = nib.load(tmp_path / "out" / "case_anomaly.nii.gz").get_fdata()
        # a threshold inside the map's range, so the mask is neither empty nor full
        threshold = float(np.quantile(batch_map[batch_map > 0], 0.9))
        _write_calibrated(network, checkpoint, threshold, saved_as)
        parser = _parser(bundle, {**overrides, "output_dir": str(tmp_path / "out2")})
        parser.get_parsed_content("evaluator").run()
        batch_mask = nib.load(tmp_path / "out2" / "case_mask.nii.gz").get_fdata()

        # the MONAI Label path: a fresh network loaded from model.pt (weights_only), then pre / inferer / post
        parser = _parser(bundle, overrides)
        assert load_thresholds(checkpoint)[0] == pytest.approx(parser.get_parsed_content("pixel_threshold"))
        served = load_checkpoint(parser.get_parsed_content("network_def"), checkpoint).eval()
        assert served.constructor_arguments == network.constructor_arguments
        data = parser.get_parsed_content("preprocessing")({"image": str(volume)})
        with torch.no_grad():
            data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], served)[0]
        post = parser.get_parsed_content("postprocessing")
        anomaly = Compose(post.transforms[:1])(dict(data))["pred"]
        label = post(data)["pred"]

    shape = nib.load(volume).shape
    assert tuple(label.shape) == (1, *shape)
    assert label.dtype == torch.uint8
    # two float paths (and MONAI's ``>=`` against the batch mask's ``>``): the label may differ at the threshold only
    assert_maps_close(anomaly[0].numpy(), batch_map)
    assert_masks_agree_off_threshold(label[0].numpy(), batch_mask, batch_map, threshold)
    assert 0 < int(label.sum()) < label.numel()
    np.testing.assert_allclose(np.asarray(label.affine), nib.load(volume).affine, atol=1e-5)
    # maps are zero outside the extracted brain, which batch inference writes beside them
    brain = nib.load(tmp_path / "out" / "case_brain_mask.nii.gz").get_fdata() > 0
    assert brain.any() and not batch_map[~brain].any()
    assert not label[0].numpy()[~brain].any()


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_metadata_gives_monai_label_a_3d_model_with_an_anomaly_label(bundle):
    meta = json.loads((contract.configs_dir(bundle) / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    # MONAI Label reads the first input and output; the dimension is the length of the input's spatial shape
    image = next(iter(fmt["inputs"].values()))
    key, pred = next(iter(fmt["outputs"].items()))
    assert len(image["spatial_shape"]) == 3
    assert key == "pred"
    assert {v: int(k) for k, v in pred["channel_def"].items()} == {"background": 0, "anomaly": 1}
    assert json.loads((contract.configs_dir(bundle) / "inference.json").read_text())["pred_key"] == key


def test_checkpoint_without_calibration_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"calibration.pixel_threshold": torch.tensor(float("nan"))}, path)
    with pytest.raises(ValueError, match="no calibrated pixel_threshold"):
        load_thresholds(path)
