"""DNFAD bundle: network and loss unit tests, ablation switches, the real configs end to end, learning checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from common.flows import LocalFlowOutput
from tests.bundles import contract
from tests.bundles.conftest import load_bundle_scripts, shared_dataset
from tests.bundles.contract import NO_OVERRIDES
from tools.phantoms import write_dataset

# A tiny network for fast CPU tests (paper: 256 x 256 inputs, 6 dynamic flow modules per branch, hidden = input).
TINY = {"image_size": [64, 64], "n_blocks": 2, "hidden_channels": 16, "pixel_hidden_channels": 16}
TINY_KWARGS = {"image_size": (64, 64), "n_blocks": 2, "hidden_channels": 16, "pixel_hidden_channels": 16}


@pytest.fixture(scope="module")
def scripts():
    return load_bundle_scripts("dnfad")


SHAPE_CASES = [
    # batch 2, square input at the network size
    (2, 64, 64),
    # batch 1, non-square input: resized for the backbone, map returned at the input size
    (1, 64, 96),
    # batch 3, input smaller than the network size
    (3, 40, 48),
]


@pytest.mark.parametrize(("batch", "height", "width"), SHAPE_CASES, ids=["square", "non-square", "small"])
def test_eval_output_is_one_channel_map_at_input_size(scripts, batch, height, width):
    torch.manual_seed(0)
    net = scripts.network.DNFAD(**TINY_KWARGS).eval()
    with torch.no_grad():
        out = net(torch.rand(batch, 1, height, width))
    assert out.shape == (batch, 1, height, width)
    assert torch.isfinite(out).all()
    # -log of a mean of probabilities <= 1 is >= 0
    assert (out >= 0).all()


def test_fused_features_concatenate_stages_two_and_three_at_the_finer_resolution(scripts):
    net = scripts.network.DNFAD(**TINY_KWARGS)
    features = net.fused_features(torch.rand(2, 1, 64, 64))
    # ResNet18 stage 2 (128 channels, stride 8) and stage 3 (256 channels, stride 16) -> 384 at stride 8
    assert features.shape == (2, 384, 8, 8)
    assert net.feature_channels == 384


def test_map_is_negative_log_of_the_mean_branch_probability(scripts):
    torch.manual_seed(0)
    net = scripts.network.DNFAD(**TINY_KWARGS).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        log_p_map, log_p_pixel = net.log_likelihood_maps(x)
        out = net(x)
        outputs = net.forward_train(x)
    # log p = -||z||^2 / 2 summed over channels, per position
    assert torch.allclose(log_p_map, -0.5 * outputs.map_flow.z.pow(2).sum(dim=1, keepdim=True))
    up = [torch.nn.functional.interpolate(m.double(), size=(64, 64), mode="bilinear") for m in (log_p_map, log_p_pixel)]
    expected = -torch.log((torch.exp(up[0]) + torch.exp(up[1])) / 2.0)  # float64: no underflow at these values
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-3)


def test_mean_log_likelihood_divides_each_branch_log_p_by_the_channel_count(scripts):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64)
    net = scripts.network.DNFAD(**TINY_KWARGS).eval()
    with torch.no_grad():
        summed = net.log_likelihood_maps(x)
        net.log_likelihood = "mean"
        averaged = net.log_likelihood_maps(x)
    channels = net.feature_channels
    for s, m in zip(summed, averaged, strict=True):
        torch.testing.assert_close(s, m * channels)
    with pytest.raises(ValueError, match="log_likelihood"):
        scripts.network.DNFAD(**TINY_KWARGS, log_likelihood="max")


def test_map_stays_finite_and_ordered_where_float32_probabilities_underflow(scripts, monkeypatch):
    net = scripts.network.DNFAD(**TINY_KWARGS).eval()
    # log-likelihoods of -200 and -300: exp() is 0 in float32 for both, so a naive P_add could not rank them
    fake = [torch.tensor([[[[-200.0, -300.0]]]]), torch.tensor([[[[-210.0, -310.0]]]])]
    monkeypatch.setattr(net, "log_likelihood_maps", lambda x: fake)
    assert torch.exp(fake[0]).eq(0).all()
    out = net(torch.zeros(1, 1, 1, 2))
    assert torch.isfinite(out).all()
    assert out[0, 0, 0, 1] > out[0, 0, 0, 0]
    expected = math.log(2) - (-200.0 + math.log1p(math.exp(-10.0)))
    assert out[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def _local(z: torch.Tensor, log_jac_map: torch.Tensor) -> LocalFlowOutput:
    return LocalFlowOutput(z, log_jac_map.flatten(1).sum(dim=1), log_jac_map)


def test_loss_is_map_nll_plus_pixel_nll_averaged_over_positions(scripts):
    z_map, z_pix = torch.full((2, 4, 3, 5), 2.0), torch.full((2, 4, 3, 5), 1.0)
    # per-sample log-determinants 3 and 5 (map), 15 and 30 (pixel), spread evenly over the 15 positions
    jac_map = torch.tensor([3.0, 5.0]).view(2, 1, 1, 1).expand(2, 1, 3, 5) / 15
    jac_pix = torch.tensor([15.0, 30.0]).view(2, 1, 1, 1).expand(2, 1, 3, 5) / 15
    loss = scripts.loss.DNFADLoss()((_local(z_map, jac_map), _local(z_pix, jac_pix)))
    # L_M = 0.5 * 60 * 4 - jac = 120 - jac; L_P = (0.5 * 60 * 1 - jac) / 15 positions
    l_map = torch.tensor([117.0, 115.0])
    l_pix = torch.tensor([(30.0 - 15.0) / 15.0, (30.0 - 30.0) / 15.0])
    assert loss.item() == pytest.approx(float((l_map + l_pix).mean()))
    only_map = scripts.loss.DNFADLoss()((_local(z_map, jac_map), None))
    assert only_map.item() == pytest.approx(116.0)
    with pytest.raises(ValueError, match="at least one branch"):
        scripts.loss.DNFADLoss()((None, None))


def test_foreground_loss_weighs_positions_by_the_foreground_fraction(scripts):
    # 2x2 feature grid; position NLLs 0.5 * C * z^2 with z = 1, 2, 3, 4 and C = 1, no log-determinant
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    nll = 0.5 * z.pow(2)
    zero = torch.zeros(1, 1, 2, 2)
    # foreground at the 4x4 input: the left column of cells fully, the top-right cell half
    foreground = torch.tensor(
        [[[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]]]
    )
    weights = torch.tensor([[[[1.0, 0.5], [1.0, 0.0]]]])
    loss = scripts.loss.DNFADLoss(foreground_only=True)((_local(z, zero), _local(z, zero)), foreground)
    expected = (weights * nll).sum() + (weights * nll).sum() / weights.sum()
    assert loss.item() == pytest.approx(expected.item())
    # an empty foreground falls back to all positions: the paper's loss
    empty = scripts.loss.DNFADLoss(foreground_only=True)((_local(z, zero), None), torch.zeros(1, 1, 4, 4))
    assert empty.item() == pytest.approx(nll.sum().item())
    with pytest.raises(TypeError, match="True or False"):
        scripts.loss.DNFADLoss(foreground_only="false")
    with pytest.raises(ValueError, match="foreground masks"):
        scripts.loss.DNFADLoss(foreground_only=True)((_local(z, zero), None), torch.tensor([1]))


ABLATIONS = [
    # full model: both branches, DSAM in the map flow
    {},
    # global (map-flow) branch only
    {"branches": ["map"]},
    # local (pixel-flow) branch only
    {"branches": ["pixel"]},
    # DSAM off: plain conv subnets in the map flow
    {"dynamic_attention": False},
    # both branches conditioned on a positional encoding (the authors' released code)
    {"positional_channels": 8},
]
ABLATION_IDS = ["full", "map-only", "pixel-only", "no-dsam", "positional"]


@pytest.mark.parametrize("ablation", ABLATIONS, ids=ABLATION_IDS)
def test_ablations_build_and_train_one_step(scripts, ablation):
    torch.manual_seed(0)
    net = scripts.network.DNFAD(**TINY_KWARGS, **ablation)
    backbone_before = {k: v.clone() for k, v in net.extractor.model.state_dict().items()}
    flows = [m for m in (net.map_flow, net.pixel_flow) if m is not None]
    assert len(flows) == len(ablation.get("branches", ["map", "pixel"]))
    has_dsam = any(type(m).__name__ == "DSAM" for m in net.modules())
    assert has_dsam == (ablation.get("dynamic_attention", True) and net.map_flow is not None)
    trainable = [p for p in net.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, betas=(0.8, 0.8), eps=1e-8)
    loss = scripts.loss.DNFADLoss()(net.forward_train(torch.rand(2, 1, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trainable)
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before, strict=True))
    for key, value in net.extractor.model.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_pixel_flow_transforms_every_position_on_its_own(scripts):
    torch.manual_seed(0)
    net = scripts.network.DNFAD(**TINY_KWARGS, branches=["pixel"]).eval()
    for param in net.pixel_flow.parameters():  # leave the identity start so the check is not trivial
        if param.requires_grad and torch.count_nonzero(param) == 0:
            torch.nn.init.normal_(param, std=0.05)
    features = torch.randn(1, 384, 4, 4)
    changed = features.clone()
    changed[0, :, 1, 2] += 1.0
    with torch.no_grad():
        z, z_changed = net.pixel_flow(features)[0], net.pixel_flow(changed)[0]
    moved = (z - z_changed).abs().sum(dim=1)[0] > 0
    assert moved[1, 2] and moved.sum() == 1


def test_pixel_flow_log_det_share_is_each_position_log_det(scripts):
    """Eq. 12: with 1x1 subnets the share of a position is log|det| of that position's own C x C Jacobian."""
    from common.flows import run_flow_with_local_log_det

    torch.manual_seed(0)
    net = scripts.network.DNFAD(image_size=(64, 64), n_blocks=2, pixel_hidden_channels=8, branches=["pixel"]).double()
    for param in net.pixel_flow.parameters():
        if param.requires_grad and torch.count_nonzero(param) == 0:
            torch.nn.init.normal_(param, std=0.05)
    features = torch.randn(1, 384, 2, 3, dtype=torch.float64)
    out = run_flow_with_local_log_det(net.pixel_flow, features)
    assert torch.allclose(out.log_jac_map.sum(), out.log_jac_det.sum())

    def one_position(v: torch.Tensor) -> torch.Tensor:
        x = features.clone()
        x[0, :, 1, 2] = v
        return net.pixel_flow(x)[0][0, :, 1, 2]

    jacobian = torch.autograd.functional.jacobian(one_position, features[0, :, 1, 2])
    assert torch.linalg.slogdet(jacobian).logabsdet.item() == pytest.approx(
        out.log_jac_map[0, 0, 1, 2].item(), rel=1e-6
    )


def test_positional_condition_gives_the_pixel_flow_a_density_per_position(scripts):
    torch.manual_seed(0)
    net = scripts.network.DNFAD(**TINY_KWARGS, branches=["pixel"], positional_channels=8).eval()
    for param in net.pixel_flow.parameters():  # leave the identity start so the check is not trivial
        if param.requires_grad and torch.count_nonzero(param) == 0:
            torch.nn.init.normal_(param, std=0.05)
    # the same feature vector at every position: without a condition every position would get the same latent
    features = torch.randn(1, 384, 1, 1).expand(1, 384, 4, 4).contiguous()
    condition = net.positional_condition(features)
    assert condition.shape == (1, 8, 4, 4)
    with torch.no_grad():
        z = net.pixel_flow(features, c=[condition])[0]
    per_position = z.flatten(2)[0].T
    assert torch.cdist(per_position, per_position).add(torch.eye(16)).min() > 1e-4
    assert scripts.network.DNFAD(**TINY_KWARGS).positional_condition(features) is None
    # the encoding is rebuilt only for a new grid and never stored in the checkpoint
    assert torch.equal(net.positional_condition(features), condition)
    assert net.positional_condition(features[..., :3]).shape == (1, 8, 4, 3)
    assert "positional_encoding" not in net.state_dict()


BAD_CONFIGS = [
    # unknown branch name
    ({"branches": ["global"]}, "branches"),
    # no branch at all
    ({"branches": []}, "branches"),
    # image size below the backbone's minimum
    ({"image_size": (16, 16)}, "image_size"),
    # negative feature noise
    ({"feature_noise": -1.0}, "feature_noise"),
    # a 2D sine-cosine encoding needs a multiple of 4 channels
    ({"positional_channels": 6}, "positional_channels"),
    # unknown random initialisation
    ({"random_backbone": "kaiming"}, "random_backbone"),
]


@pytest.mark.parametrize(
    ("kwargs", "word"),
    BAD_CONFIGS,
    ids=["branch-name", "no-branch", "image-size", "noise", "positional", "random-backbone"],
)
def test_bad_configuration_raises_value_error(scripts, kwargs, word):
    with pytest.raises(ValueError, match=word):
        scripts.network.DNFAD(n_blocks=1, hidden_channels=8, pixel_hidden_channels=8, **kwargs)


def test_command_line_string_bool_is_rejected(scripts):
    # a command-line "false" arrives as a string and must not silently mean True
    with pytest.raises(TypeError, match="dynamic_attention must be True or False"):
        scripts.network.DNFAD(n_blocks=1, hidden_channels=8, pixel_hidden_channels=8, dynamic_attention="false")


@pytest.mark.parametrize(
    ("config", "workflow_type"), [("train.json", "train"), ("inference.json", "infer")], ids=["train", "infer"]
)
def test_configs_define_the_bundle_properties(phantoms_3d, tmp_path, config, workflow_type):
    contract.check_config_properties("dnfad", config, workflow_type, phantoms_3d, tmp_path)


def test_metadata_verifies_against_the_schema():
    contract.check_metadata_verifies("dnfad")


@pytest.fixture(scope="module")
def trained_tiny(phantoms_3d, tmp_path_factory) -> Path:
    """Train the tiny network for one epoch through ``python -m monai.bundle run training`` (real config)."""
    out = tmp_path_factory.mktemp("dnfad_run")
    return contract.train("dnfad", {**TINY, "dataset_dir": phantoms_3d, "max_epochs": 1, "batch_size": 8}, out)


def test_training_writes_checkpoint_with_calibration(trained_tiny):
    state = contract.check_checkpoint_calibrated(trained_tiny, TINY["image_size"], "topk_probability")
    assert bool(state["extractor.fitted"])
    assert any(key.startswith("map_flow.") for key in state)
    assert any(key.startswith("pixel_flow.") for key in state)


def test_nifti_folder_inference_skips_bad_files(phantoms_3d, trained_tiny, tmp_path):
    lesion = sorted((phantoms_3d / "test" / "lesion").iterdir())[0]
    contract.check_nifti_inference_skips_bad_files("dnfad", NO_OVERRIDES, trained_tiny, lesion, tmp_path)


@pytest.mark.slow
def test_torchrun_training_with_two_cpu_processes(phantoms_3d, tmp_path):
    contract.check_torchrun_training("dnfad", TINY, phantoms_3d, tmp_path, "topk_probability")


def test_torchscript_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_torchscript_export("dnfad", trained_tiny, TINY["image_size"], tmp_path)


def test_onnx_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_onnx_export("dnfad", trained_tiny, TINY["image_size"], tmp_path)


def test_evaluation_writes_metrics_and_plots(phantoms_3d, trained_tiny, tmp_path):
    contract.check_evaluation_outputs("dnfad", NO_OVERRIDES, trained_tiny, phantoms_3d, tmp_path, n_volumes=3)


@pytest.mark.parametrize("layout", ["empty", "no-train-good"], ids=["empty", "no-train-good"])
def test_training_fails_before_starting_on_a_bad_dataset_dir(tmp_path, layout):
    contract.check_training_fails_on_bad_dataset_dir("dnfad", TINY, tmp_path, layout)


# Floors set from seeds 0-4 of the phantom configuration below (default feature stages 1-2; the test trains seed 0) on
# a 2-core AMD EPYC, image AUROC / pixel AUROC in the foreground, one thread (OMP_NUM_THREADS=1): 0.653 / 0.823,
# 0.681 / 0.826, 0.715 / 0.873, 0.681 / 0.848, 0.639 / 0.831; seeds 0 and 4 with two threads and with oneDNN off
# (torch.backends.mkldnn.enabled = False) gave the same to three decimals. The floors sit 0.039 and 0.12 below the
# lowest (12 normal and 12 lesion images: the image AUROC's chance spread is +- 0.12).
PHANTOM_IMAGE_AUROC_FLOOR = 0.60
PHANTOM_PIXEL_AUROC_FLOOR = 0.70
# Floors set from seeds 0 / 1 / 2 of the BraTS configuration below (default feature stages 1-2; the test trains seed
# 0) on a 2-core AMD EPYC, pixel AUROC / pixel AUROC inside the brain, one thread (OMP_NUM_THREADS=1): 0.976 / 0.884,
# 0.975 / 0.880, 0.981 / 0.913 (image AUROC 0.719, 0.698, 0.736); seed 0 with two threads and with oneDNN off
# (torch.backends.mkldnn.enabled = False) gave the same to three decimals. The floors sit 0.075 and 0.18 below the
# lowest. Over all pixels, a map that is random inside the brain already scores about 0.85, so the foreground figure
# (chance 0.5) is asserted as well.
BRATS_PIXEL_AUROC_FLOOR = 0.90
BRATS_FOREGROUND_PIXEL_AUROC_FLOOR = 0.70


@pytest.mark.slow
def test_learns_to_detect_phantom_lesions(tmp_path):
    """Short CPU training on 2D phantoms; floors set from measured runs (seeds and float paths, above)."""
    data = write_dataset(tmp_path / "data", dims=2, n_train=40, n_test_good=12, n_test_lesion=12, size=64, seed=3)
    overrides = {"image_size": [64, 64], "n_blocks": 2, "hidden_channels": 32, "pixel_hidden_channels": 32}
    metrics = contract.train_and_evaluate(
        "dnfad", data, overrides, {"max_epochs": 6, "batch_size": 8}, {}, tmp_path, (900, 300)
    )
    print("phantom learning metrics:", json.dumps(metrics))
    assert metrics["image_auroc"] >= PHANTOM_IMAGE_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc_foreground"] >= PHANTOM_PIXEL_AUROC_FLOOR, metrics


@pytest.mark.slow
@pytest.mark.realdata
def test_brats_slices_pixel_auroc_floor(tmp_path):
    """Short CPU training on the real BraTS FLAIR slices; floors set from measured runs (seeds and float paths)."""
    data = shared_dataset("brats2015_slices")
    overrides = {"image_size": [128, 128], "n_blocks": 2, "hidden_channels": 64, "pixel_hidden_channels": 64}
    metrics = contract.train_and_evaluate(
        "dnfad", data, overrides, {"max_epochs": 3}, {"n_overlays": 0}, tmp_path, (1200, 600)
    )
    print("brats metrics:", json.dumps(metrics))
    assert metrics["pixel_auroc"] >= BRATS_PIXEL_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc_foreground"] >= BRATS_FOREGROUND_PIXEL_AUROC_FLOOR, metrics


@pytest.mark.parametrize(("random_backbone", "silenced"), [("recalibrated", False), ("timm", True)])
def test_random_backbone_chooses_the_initialisation(scripts, random_backbone, silenced):
    torch.manual_seed(0)
    net = scripts.network.DNFAD(**TINY_KWARGS, random_backbone=random_backbone)
    last_norms = [block.bn2.weight for block in net.extractor.model.layer1]
    assert all(bool((w == 0).all()) is silenced for w in last_norms)
    assert net.extractor.recalibrate_batchnorm is not silenced
