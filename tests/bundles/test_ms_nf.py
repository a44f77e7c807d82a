"""MS-NF bundle: network unit tests, the real configs end to end, bad input, and learning checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.bundles import contract
from tests.bundles.conftest import load_bundle_scripts, shared_dataset
from tests.bundles.contract import NO_OVERRIDES
from tools.phantoms import write_dataset

# A tiny network for fast CPU tests (paper: 256 x 256, 15 blocks, hidden width 128).
TINY = {"image_size": [64, 64], "n_blocks": 2, "hidden_channels": 16}
# The trained tiny model reads stages 1-2 (not the default 1-3): inference and evaluation rebuild them from the
# checkpoint alone.
TINY_TRAINED = {**TINY, "out_indices": [1, 2]}


@pytest.fixture(scope="module")
def network_module():
    return load_bundle_scripts("ms_nf").network


SHAPE_CASES = [
    # batch 2, square input at the network size
    (2, 64, 64),
    # batch 1, non-square input: resized for the backbone, map returned at the input size
    (1, 64, 96),
    # batch 3, input smaller than the network size
    (3, 40, 48),
]


@pytest.mark.parametrize(("batch", "height", "width"), SHAPE_CASES, ids=["square", "non-square", "small"])
def test_eval_output_is_one_channel_map_at_input_size(network_module, batch, height, width):
    torch.manual_seed(0)
    net = network_module.MSNF(image_size=(64, 64), n_blocks=2, hidden_channels=16).eval()
    with torch.no_grad():
        out = net(torch.rand(batch, 1, height, width))
    assert out.shape == (batch, 1, height, width)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()


def test_forward_train_gives_finite_gradients_and_keeps_backbone_frozen(network_module):
    torch.manual_seed(0)
    net = network_module.MSNF(image_size=(64, 64), n_blocks=2, hidden_channels=16)
    from common.flows import FlowNLLLoss

    backbone_before = {k: v.clone() for k, v in net.extractor.model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    outputs = net.forward_train(torch.rand(2, 1, 64, 64))
    assert [o.z.shape[1] for o in outputs.flows] == [64, 128, 256]
    loss = FlowNLLLoss()(outputs)
    loss.backward()
    grads = [p.grad for p in net.flows.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for p in net.extractor.parameters())
    optimizer.step()
    for key, value in net.extractor.model.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key


def test_nll_map_adds_each_positions_log_determinant_share(network_module):
    """``map_score="nll"`` is the z² map minus the position's log-det share over C (eq. 12 per position)."""
    torch.manual_seed(0)
    kwargs = {"image_size": (64, 64), "n_blocks": 2, "hidden_channels": 16}
    z2 = network_module.MSNF(**kwargs, map_score="z2").eval()
    with torch.no_grad():  # move the couplings away from the identity they start as
        for parameter in z2.flows.parameters():
            if parameter.is_floating_point():
                parameter.add_(0.05 * torch.randn_like(parameter))
    nll = network_module.MSNF(**kwargs, map_score="nll").eval()
    nll.load_state_dict(z2.state_dict())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        outputs = z2.forward_train(x).flows
        difference = [n - z for n, z in zip(nll.scale_maps(x), z2.scale_maps(x), strict=True)]
    for out, diff in zip(outputs, difference, strict=True):
        assert out.log_jac_map.abs().max() > 1e-3
        torch.testing.assert_close(diff, -out.log_jac_map / out.z.shape[1], rtol=1e-4, atol=1e-5)
        # summed over positions, the NLL map is the sample's NLL of the training loss over C
        expected = (0.5 * out.z.pow(2).sum(dim=(1, 2, 3)) - out.log_jac_det) / out.z.shape[1]
        total = (0.5 * out.z.pow(2).mean(dim=1, keepdim=True) + diff).sum(dim=(1, 2, 3))
        torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-3)


BAD_CONFIGS = [
    # unknown fusion rule
    ({"fusion": "sum"}, "fusion"),
    # image size below the backbone's minimum
    ({"image_size": (16, 16)}, "image_size"),
    # unknown backbone
    ({"backbone": "not_a_model"}, "not_a_model"),
    # unknown map score
    ({"map_score": "logp"}, "map_score"),
    # unknown random initialisation
    ({"random_backbone": "kaiming"}, "random_backbone"),
]


@pytest.mark.parametrize(
    ("kwargs", "word"), BAD_CONFIGS, ids=["fusion", "image-size", "backbone", "map-score", "random-backbone"]
)
def test_bad_configuration_raises_value_error(network_module, kwargs, word):
    with pytest.raises(ValueError, match=word):
        network_module.MSNF(n_blocks=1, hidden_channels=8, **kwargs)


@pytest.mark.parametrize(
    ("config", "workflow_type"), [("train.json", "train"), ("inference.json", "infer")], ids=["train", "infer"]
)
def test_configs_define_the_bundle_properties(phantoms_3d, tmp_path, config, workflow_type):
    contract.check_config_properties("ms_nf", config, workflow_type, phantoms_3d, tmp_path)


def test_metadata_verifies_against_the_schema():
    contract.check_metadata_verifies("ms_nf")


@pytest.fixture(scope="module")
def trained_tiny(phantoms_3d, tmp_path_factory) -> Path:
    """Train the tiny network for one epoch through ``python -m monai.bundle run training`` (real config)."""
    out = tmp_path_factory.mktemp("ms_nf_run")
    overrides = {**TINY_TRAINED, "dataset_dir": phantoms_3d, "max_epochs": 1, "batch_size": 8}
    return contract.train("ms_nf", overrides, out)


def test_training_writes_checkpoint_with_calibration(trained_tiny):
    state = contract.check_checkpoint_calibrated(trained_tiny, TINY["image_size"], "topk_mean")
    assert bool(state["extractor.fitted"])
    flows = {key.split(".")[1] for key in state if key.startswith("flows.")}
    assert flows == {"0", "1"}, "one flow per configured stage (out_indices [1, 2])"


def test_nifti_folder_inference_skips_bad_files(phantoms_3d, trained_tiny, tmp_path):
    lesion = sorted((phantoms_3d / "test" / "lesion").iterdir())[0]
    contract.check_nifti_inference_skips_bad_files("ms_nf", NO_OVERRIDES, trained_tiny, lesion, tmp_path)


@pytest.mark.slow
def test_inference_under_torchrun_matches_one_process(phantoms_3d, trained_tiny, tmp_path):
    volumes = [sorted((phantoms_3d / "test" / label).iterdir())[0] for label in ("good", "lesion")]
    contract.check_distributed_inference_matches_one_process("ms_nf", trained_tiny, volumes, tmp_path)


def test_model_pt_alone_rebuilds_the_network(phantoms_3d, trained_tiny, tmp_path):
    lesion = sorted((phantoms_3d / "test" / "lesion").iterdir())[0]
    contract.check_checkpoint_describes_its_network(
        "ms_nf", TINY_TRAINED, trained_tiny, lesion, ("n_blocks", 3), tmp_path
    )


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path):
    data = write_dataset(tmp_path / "data", dims=2, n_train=16, n_test_good=2, n_test_lesion=2, size=64, seed=0)
    contract.check_resume_matches_uninterrupted("ms_nf", {**TINY, "batch_size": 4}, data, tmp_path)


@pytest.mark.slow
def test_torchrun_training_with_two_cpu_processes(phantoms_3d, tmp_path):
    contract.check_torchrun_training("ms_nf", TINY, phantoms_3d, tmp_path, "topk_mean")


def test_torchscript_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_torchscript_export("ms_nf", trained_tiny, TINY["image_size"], tmp_path)


def test_onnx_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_onnx_export("ms_nf", trained_tiny, TINY["image_size"], tmp_path)


def test_evaluation_writes_metrics_and_plots(phantoms_3d, trained_tiny, tmp_path):
    contract.check_evaluation_outputs("ms_nf", NO_OVERRIDES, trained_tiny, phantoms_3d, tmp_path, n_volumes=3)


@pytest.mark.parametrize("layout", ["empty", "no-train-good"], ids=["empty", "no-train-good"])
def test_training_fails_before_starting_on_a_bad_dataset_dir(tmp_path, layout):
    contract.check_training_fails_on_bad_dataset_dir("ms_nf", TINY, tmp_path, layout)


@pytest.mark.slow
def test_learns_to_detect_phantom_lesions(tmp_path):
    """Short CPU training on 2D phantoms; floors set from measured runs (seeds and float paths, below)."""
    data = write_dataset(tmp_path / "data", dims=2, n_train=40, n_test_good=12, n_test_lesion=12, size=64, seed=3)
    # a 4-block flow trains stably without the warm-up the 15-block default needs
    overrides = {"image_size": [64, 64], "n_blocks": 4, "hidden_channels": 32, "warmup_iterations": 0}
    metrics = contract.train_and_evaluate(
        "ms_nf", data, overrides, {"max_epochs": 6, "batch_size": 8}, {}, tmp_path, (900, 300)
    )
    print("phantom learning metrics:", json.dumps(metrics))
    assert metrics["image_auroc"] >= PHANTOM_IMAGE_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc_foreground"] >= PHANTOM_PIXEL_AUROC_FLOOR, metrics


# Floors set from seeds 0-4 of this configuration (stages 1-2; the test trains seed 0) on a 2-core AMD EPYC, image
# AUROC / pixel AUROC in the foreground, one thread (OMP_NUM_THREADS=1): 0.785 / 0.837, 0.660 / 0.841, 0.785 / 0.886,
# 0.708 / 0.756, 0.708 / 0.781; seeds 0 and 3 with two threads and with oneDNN off (torch.backends.mkldnn.enabled =
# False) gave the same to three decimals. Each floor sits 0.04 below the lowest. With 12 normal and 12 lesion images
# the image AUROC's chance spread is +- 0.12, so the foreground pixel floor (chance 0.5) is the learning check.
PHANTOM_IMAGE_AUROC_FLOOR = 0.62
PHANTOM_PIXEL_AUROC_FLOOR = 0.72
# Floors set from seeds 0-4 of the BraTS configuration (128x128, 4 blocks, 3 epochs, stages 1-2, default clipping, no
# warm-up; the test trains seed 0) on a 2-core AMD EPYC, pixel AUROC / pixel AUROC inside the brain, one thread
# (OMP_NUM_THREADS=1): 0.976 / 0.886, 0.946 / 0.725, 0.968 / 0.845, 0.947 / 0.732, 0.973 / 0.868 (image AUROC 0.830,
# 0.533, 0.889, 0.763, 0.914); seeds 0 and 1 with two threads and with oneDNN off (torch.backends.mkldnn.enabled =
# False) within 0.001 of those. Three epochs leave the in-brain figure seed-dependent (seed 1 lowest), so the floors
# sit 0.035 below the lowest: well above chance inside the brain (0.5) and above the 0.85 that a map random inside
# the brain scores over all pixels.
BRATS_PIXEL_AUROC_FLOOR = 0.91
BRATS_BRAIN_PIXEL_AUROC_FLOOR = 0.69


@pytest.mark.slow
@pytest.mark.realdata
def test_brats_slices_pixel_auroc_floor(tmp_path):
    """Short CPU training on the real BraTS FLAIR slices; floors set from measured runs (seeds and float paths)."""
    data = shared_dataset("brats2015_slices")
    overrides = {"image_size": [128, 128], "n_blocks": 4, "warmup_iterations": 0}
    metrics = contract.train_and_evaluate(
        "ms_nf", data, overrides, {"max_epochs": 3}, {"n_overlays": 0}, tmp_path, (1200, 600)
    )
    print("brats metrics:", json.dumps(metrics))
    assert metrics["pixel_auroc"] >= BRATS_PIXEL_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc_foreground"] >= BRATS_BRAIN_PIXEL_AUROC_FLOOR, metrics


@pytest.mark.parametrize(("random_backbone", "silenced"), [("recalibrated", False), ("timm", True)])
def test_random_backbone_chooses_the_initialisation(network_module, random_backbone, silenced):
    torch.manual_seed(0)
    net = network_module.MSNF(image_size=(64, 64), n_blocks=1, hidden_channels=8, random_backbone=random_backbone)
    last_norms = [block.bn2.weight for block in net.extractor.model.layer1]
    assert all(bool((w == 0).all()) is silenced for w in last_norms)
    assert net.extractor.recalibrate_batchnorm is not silenced
    assert "random_backbone" not in net.constructor_arguments  # training only: model.pt holds the backbone
