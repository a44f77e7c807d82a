"""AnomalyPro bundle: eq. 2, the gradient penalty, one GAN iteration, pseudo-AUC, configs end to end, learning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.engines import GanTrainer
from monai.networks.nets import PatchDiscriminator
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from common.data import discover_dataset
from common.scoring import MapScorer
from common.training import read_state_dict
from tests.bundles import contract
from tests.bundles.conftest import REPO_ROOT, load_bundle_scripts, shared_dataset
from tests.bundles.contract import NO_OVERRIDES
from tools.bundles import run_bundle
from tools.phantoms import write_dataset

BUNDLE = REPO_ROOT / "bundles" / "anomalypro"
CONFIGS = BUNDLE / "configs"
# A tiny network for fast CPU tests (paper: 256 x 256; bundle default width 64, 6 residual blocks).
TINY = {"image_size": [32, 32], "channels": 8, "n_res": 1}
TINY_TRAIN = {**TINY, "critic_channels": 8}


@pytest.fixture(scope="module")
def scripts():
    return load_bundle_scripts("anomalypro")


def _tiny_generator(scripts, **kwargs):
    return scripts.network.AnomalyProGenerator(image_size=(32, 32), channels=8, n_res=1, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# generator: eq. 2, eq. 1, output shapes, bad configurations

COMPOSE_CASES = [
    # mask all zero: the input comes back exactly
    ("zeros", "input"),
    # mask all one: the intermediate image comes back exactly
    ("ones", "intermediate"),
]


@pytest.mark.parametrize(("mask_kind", "expected"), COMPOSE_CASES, ids=["mask-0", "mask-1"])
def test_eq2_composition_at_mask_extremes(scripts, mask_kind, expected):
    torch.manual_seed(0)
    image, intermediate = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 1, 16, 16) if mask_kind == "zeros" else torch.ones(2, 1, 16, 16)
    healthy = scripts.network.compose_healthy(intermediate, mask, image)
    complement = scripts.network.compose_complement(intermediate, mask, image)
    target, other = (image, intermediate) if expected == "input" else (intermediate, image)
    assert torch.equal(healthy, target)
    assert torch.equal(complement, other)  # eq. 1 is the mirror image


def test_eq2_blends_with_an_intermediate_mask(scripts):
    image, intermediate = torch.full((1, 1, 2, 2), 0.2), torch.full((1, 1, 2, 2), 1.0)
    mask = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]])
    healthy = scripts.network.compose_healthy(intermediate, mask, image)
    torch.testing.assert_close(healthy, torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]]]))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 24)], ids=["network-size", "other-size"])
def test_generator_with_a_closed_mask_returns_its_input_exactly(scripts, height, width):
    net = _tiny_generator(scripts).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias[1:].fill_(-1e4)  # sigmoid(-1e4) == 0: M = 0 everywhere
    x = torch.rand(2, 1, height, width)
    with torch.no_grad():
        assert torch.equal(net.translate(x), x)
        assert torch.equal(net(x), torch.zeros(2, 1, height, width))


SHAPE_CASES = [
    # batch 2 at the network size
    (2, 32, 32),
    # batch 1, non-square: resized for the network, outputs at the input size
    (1, 48, 40),
]


@pytest.mark.parametrize(("batch", "height", "width"), SHAPE_CASES, ids=["square", "non-square"])
def test_eval_outputs_are_maps_and_healthy_images_at_input_size(scripts, batch, height, width):
    torch.manual_seed(0)
    net = _tiny_generator(scripts).eval()
    x = torch.rand(batch, 1, height, width)
    with torch.no_grad():
        anomaly = net(x)
        outputs = net.forward_outputs(x)
        train = net.forward_train(x)
    assert anomaly.shape == (batch, 1, height, width)
    assert torch.isfinite(anomaly).all() and (anomaly >= 0).all()
    torch.testing.assert_close(outputs["anomaly"], anomaly)
    torch.testing.assert_close(outputs["healthy"], train.healthy)
    torch.testing.assert_close(anomaly, (x - train.healthy).abs())  # the map is |x - B0|
    assert ((train.mask >= 0) & (train.mask <= 1)).all()
    # a fresh generator starts near the identity (mask bias -3)
    assert float(train.mask.mean()) < 0.1


BAD_CONFIGS = [
    # image size not divisible by 2**n_down
    ({"image_size": (30, 30)}, "image_size"),
    # no channels
    ({"channels": 0}, "channels"),
]


@pytest.mark.parametrize(("kwargs", "word"), BAD_CONFIGS, ids=["image-size", "channels"])
def test_bad_configuration_raises_value_error(scripts, kwargs, word):
    arguments = {"image_size": (32, 32), "channels": 8, "n_res": 1} | kwargs
    with pytest.raises(ValueError, match=word):
        scripts.network.AnomalyProGenerator(**arguments)


def test_wrong_channel_count_names_the_expected_shape(scripts):
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\)"):
        _tiny_generator(scripts)(torch.rand(1, 3, 32, 32))


# ----------------------------------------------------------------------------------------------------------------------
# losses: gradient penalty (eq. 3) on a linear critic, critic and generator losses


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x * self.weight).flatten(1).sum(dim=1) + self.bias).view(-1, 1, 1, 1)


def _weights_with_norm_three() -> torch.Tensor:
    weight = torch.zeros(1, 2, 2)
    weight[0, 0, 0], weight[0, 1, 1] = 2.0, -1.0
    weight[0, 0, 1] = 2.0  # sqrt(4 + 1 + 4) = 3
    return weight


@pytest.mark.parametrize("alpha_value", [0.0, 0.3, 1.0], ids=["fake", "mixed", "real"])
def test_gradient_penalty_matches_hand_computation_on_a_linear_critic(scripts, alpha_value):
    critic = LinearCritic(_weights_with_norm_three())
    real, fake = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    alpha = torch.full((3, 1, 1, 1), alpha_value)
    penalty = scripts.loss.gradient_penalty(critic, real, fake, alpha)
    assert float(penalty.detach()) == pytest.approx((3.0 - 1.0) ** 2)  # ||grad D|| = ||w|| = 3 -> (3 - 1)^2 = 4
    penalty.backward()  # differentiable w.r.t. the critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.weight.grad, 2 * (3.0 - 1.0) * critic.weight.detach() / 3.0)


def test_critic_loss_is_wasserstein_estimate_plus_weighted_penalty(scripts):
    critic = LinearCritic(_weights_with_norm_three())
    real, fake = torch.rand(4, 1, 2, 2), torch.rand(4, 1, 2, 2)
    out = scripts.network.TranslationOutput
    step = scripts.engine.TranslationStep(
        out(real, fake, fake, torch.zeros_like(fake), real), out(real, real, real, torch.zeros_like(real), real)
    )
    expected = critic(fake).mean() - critic(real).mean() + 10.0 * 4.0  # eq. 3 with lambda_gp = 10, penalty 4
    torch.testing.assert_close(scripts.loss.CriticLoss(critic, lambda_gp=10.0)(step), expected)


def test_generator_loss_terms(scripts):
    critic = LinearCritic(torch.full((1, 2, 2), 0.5), bias=0.0)
    image = torch.full((2, 1, 2, 2), 0.5)
    healthy = torch.full((2, 1, 2, 2), 0.25, requires_grad=True)
    mask = torch.full((2, 1, 2, 2), 0.5)
    complement = torch.full((2, 1, 2, 2), 0.75)
    out = scripts.network.TranslationOutput(image, healthy, healthy, mask, complement)
    step = scripts.engine.TranslationStep(out, out)
    loss = scripts.loss.GeneratorLoss(critic, lambda_rec=2.0, lambda_id=3.0, lambda_f=4.0)
    terms = {k: v.detach() for k, v in loss.terms(step).items()}
    assert float(terms["adv"]) == pytest.approx(-0.5)  # -(4 pixels * 0.5 * 0.25)
    assert float(terms["rec"]) == pytest.approx(0.25)  # |A0 - x|
    assert float(terms["id"]) == pytest.approx(0.25)  # |B0 - x| on set B
    assert float(terms["focus"]) == pytest.approx(0.25)  # M (1 - M) at M = 0.5
    assert float(loss(step).detach()) == pytest.approx(-0.5 + 2 * 0.25 + 3 * 0.25 + 4 * 0.25)
    loss(step).backward()
    assert critic.weight.grad is None, "the generator loss must not train the critic"
    assert healthy.grad is not None and torch.isfinite(healthy.grad).all()


@pytest.mark.parametrize("name", ["lambda_rec", "lambda_id", "lambda_f"])
def test_negative_loss_weight_raises(scripts, name):
    with pytest.raises(ValueError, match=name):
        scripts.loss.GeneratorLoss(LinearCritic(torch.ones(1, 2, 2)), **{name: -1.0})


# ----------------------------------------------------------------------------------------------------------------------
# one full GAN iteration on MONAI's GanTrainer


def test_one_gan_iteration_updates_both_networks_without_nan(scripts):
    torch.manual_seed(0)
    generator = _tiny_generator(scripts)
    critic = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=2, norm="INSTANCE")
    batches = [{"image": torch.rand(4, 1, 32, 32), "image_b": torch.rand(4, 1, 32, 32)}]
    loader = DataLoader(batches, batch_size=None)
    generator_input = scripts.engine.CurrentBatchInput()
    g_before = {k: v.clone() for k, v in generator.state_dict().items() if isinstance(v, torch.Tensor)}
    d_before = {k: v.clone() for k, v in critic.state_dict().items()}
    trainer = GanTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        g_network=generator,
        g_optimizer=torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.5, 0.999)),
        g_loss_function=scripts.loss.GeneratorLoss(critic),
        d_network=critic,
        d_optimizer=torch.optim.Adam(critic.parameters(), 1e-3, betas=(0.5, 0.999)),
        d_loss_function=scripts.loss.CriticLoss(critic),
        g_inferer=scripts.engine.TranslationInferer(),
        d_train_steps=2,
        d_prepare_batch=scripts.engine.prepare_paired_batch,
        g_prepare_batch=generator_input,
        g_update_latents=False,
        decollate=False,
        train_handlers=[generator_input],
    )
    trainer.run()
    output = trainer.state.output
    assert np.isfinite(output["g_loss"]) and np.isfinite(output["d_loss"])
    assert trainer.state.iteration == 1
    g_changed = [k for k, v in g_before.items() if not torch.equal(v, generator.state_dict()[k])]
    d_changed = [k for k, v in d_before.items() if not torch.equal(v, critic.state_dict()[k])]
    assert any(k.startswith("body") for k in g_changed) and any(k.startswith("head") for k in g_changed)
    # every critic weight moved (the last bias cannot: a constant offset cancels in E[D(fake)] - E[D(real)])
    assert {k for k in d_before if k.endswith("weight")} <= set(d_changed)
    for net in (generator, critic):
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_current_batch_input_must_be_attached(scripts):
    with pytest.raises(RuntimeError, match="train_handlers"):
        scripts.engine.CurrentBatchInput()(num_latents=1, latent_size=1)


def test_prepare_paired_batch_names_missing_keys(scripts):
    with pytest.raises(KeyError, match="image_b"):
        scripts.engine.prepare_paired_batch({"image": torch.zeros(1, 1, 4, 4)})


# ----------------------------------------------------------------------------------------------------------------------
# pseudo-AUC and the selection handler


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pseudo_auc_equals_sklearn_auroc(scripts, seed):
    rng = np.random.default_rng(seed)
    set_a, set_b = rng.random(37) + 0.2, rng.random(23)
    set_a[:5] = set_b[:5]  # ties between the sets
    expected = roc_auc_score(np.r_[np.ones(37), np.zeros(23)], np.r_[set_a, set_b])
    assert scripts.selection.pseudo_auc(set_a, set_b) == pytest.approx(expected, abs=1e-12)


def test_pseudo_auc_hand_case_and_errors(scripts):
    assert scripts.selection.pseudo_auc([0.9, 0.4], [0.1, 0.5]) == 0.75  # 3 of 4 (A, B) pairs ordered
    with pytest.raises(ValueError, match="both sets"):
        scripts.selection.pseudo_auc([], [0.1])
    with pytest.raises(ValueError, match="non-finite"):
        scripts.selection.pseudo_auc([np.nan], [0.1])


class _Engine:
    def __init__(self, max_epochs: int) -> None:
        self.state = type("State", (), {"epoch": 0, "max_epochs": max_epochs, "metrics": {}})()


def test_selection_handler_restores_the_best_generator(scripts, monkeypatch):
    net = _tiny_generator(scripts)
    values = iter([0.6, 0.9, 0.7])
    handler = scripts.selection.PseudoAUCHandler(net, [], [], "cpu", MapScorer("mean"))
    monkeypatch.setattr(handler, "evaluate", lambda: next(values))
    engine = _Engine(max_epochs=3)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            net.head.bias.fill_(float(epoch))  # a recognisable generator per epoch
        engine.state.epoch = epoch
        handler(engine)
        assert engine.state.metrics["pseudo_auc"] == [0.6, 0.9, 0.7][epoch - 1]
    handler.restore_best(engine)
    assert torch.all(net.head.bias == 2.0), "the epoch-2 generator (best pseudo-AUC) is restored"
    assert net.calibration.settings["model_selection"]["epoch"] == 2


def test_selection_handler_keeps_the_last_generator_without_mixed_data(scripts, monkeypatch):
    net = _tiny_generator(scripts)
    values = iter([0.9, 0.5])
    handler = scripts.selection.PseudoAUCHandler(net, [], [], "cpu", MapScorer("mean"), select_best=False)
    monkeypatch.setattr(handler, "evaluate", lambda: next(values))
    engine = _Engine(max_epochs=2)
    for epoch in (1, 2):
        with torch.no_grad():
            net.head.bias.fill_(float(epoch))
        engine.state.epoch = epoch
        handler(engine)
    handler.restore_best(engine)
    assert torch.all(net.head.bias == 2.0)
    assert net.calibration.settings["model_selection"] == {
        "criterion": "last_epoch",
        "epoch": 2,
        "pseudo_auc_history": [[1, 0.9], [2, 0.5]],
    }


# ----------------------------------------------------------------------------------------------------------------------
# training sets: set A / set B, held-out copies, pairing


def test_training_sets_without_mixed_use_set_b_as_set_a(scripts, tmp_path):
    data = write_dataset(tmp_path / "d", dims=2, n_train=6, n_test_good=0, n_test_lesion=0, size=32)
    sets = scripts.data.resolve_training_sets(discover_dataset(data), calibration_fraction=0.34, seed=0)
    assert not sets.mixed
    assert sets.set_a == sets.set_b
    assert len(sets.held_out) == 3 and not {r.image for r in sets.held_out} & {r.image for r in sets.set_b}


def test_training_sets_drop_mixed_copies_of_held_out_files(scripts, tmp_path):
    data = write_dataset(
        tmp_path / "d", dims=2, n_train=6, n_test_good=0, n_test_lesion=0, size=32, n_mixed_good=2, n_mixed_lesion=2
    )
    for path in sorted((data / "train" / "good").iterdir()):  # like BraTS: mixed holds copies of train/good
        shutil.copy(path, data / "train" / "mixed" / f"copy_{path.name}")
    sets = scripts.data.resolve_training_sets(discover_dataset(data), calibration_fraction=0.34, seed=0)
    assert sets.mixed
    held = {r.image.name for r in sets.held_out}
    names = {r.image.name for r in sets.set_a}
    assert len(names) == 4 + 6 - len(held)
    assert not {f"copy_{n}" for n in held} & names
    assert {f"copy_{r.image.name}" for r in sets.set_b} <= names


def test_paired_dataset_pairs_every_set_a_slice_with_a_set_b_slice(scripts):
    a = [{"image": np.full((1, 4, 4), i, np.float32), "foreground": np.ones((1, 4, 4), np.float32)} for i in range(3)]
    b = [{"image": np.full((1, 4, 4), -1.0, np.float32), "foreground": np.ones((1, 4, 4), np.float32)}]
    dataset = scripts.data.PairedSliceDataset(a, b)
    assert len(dataset) == 3
    item = dataset[2]
    assert set(item) == {"image", "image_b"}
    assert float(item["image"].max()) == 2.0 and float(item["image_b"].max()) == -1.0
    with pytest.raises(ValueError, match="set A and set B"):
        scripts.data.PairedSliceDataset(a, [])


# ----------------------------------------------------------------------------------------------------------------------
# configs, metadata, end-to-end runs of the real configs


@pytest.fixture(scope="module")
def phantoms_3d(tmp_path_factory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("ap3d") / "data",
        dims=3,
        n_train=4,
        n_test_good=1,
        n_test_lesion=2,
        size=32,
        depth=10,
        n_mixed_good=1,
        n_mixed_lesion=2,
    )


@pytest.mark.parametrize(
    ("config", "workflow_type"), [("train.json", "train"), ("inference.json", "infer")], ids=["train", "infer"]
)
def test_configs_define_the_bundle_properties(phantoms_3d, tmp_path, config, workflow_type):
    contract.check_config_properties("anomalypro", config, workflow_type, phantoms_3d, tmp_path, TINY)


def test_metadata_verifies_against_the_schema():
    contract.check_metadata_verifies("anomalypro")


def test_configs_share_the_network_and_scoring_settings():
    train, infer, evaluate = (
        json.loads((CONFIGS / n).read_text()) for n in ("train.json", "inference.json", "evaluate.json")
    )
    for key in ("image_size", "channels", "n_down", "n_res"):  # architecture: from model.pt, the training default else
        assert infer[key] == evaluate[key] == f"$@architecture.get('{key}', {train[key]!r})", key
    for key in ("score_method", "smoothing_sigma", "intensity"):
        assert train[key] == infer[key] == evaluate[key], key
    assert infer["volume_score"] == evaluate["volume_score"] == "mean"  # Brainomaly's subject-level average
    assert train["score_method"] == "mean"  # the paper: mean of |x - B0|
    assert train["n_critic"] == 2 and train["lambda_gp"] == 10.0


@pytest.fixture(scope="module")
def trained_tiny(phantoms_3d, tmp_path_factory) -> Path:
    """Train the tiny network for two epochs through ``python -m monai.bundle run training`` (real config)."""
    out = tmp_path_factory.mktemp("anomalypro_run")
    overrides = {**TINY_TRAIN, "dataset_dir": phantoms_3d, "max_epochs": 2, "batch_size": 8}
    return contract.train("anomalypro", overrides, out)


def test_training_writes_checkpoint_with_calibration_and_selection(trained_tiny):
    state = contract.check_checkpoint_calibrated(trained_tiny, TINY["image_size"], "mean")
    settings = state["calibration._extra_state"]
    assert settings["preprocessing"]["set_a"] == "train/mixed"
    selection = settings["model_selection"]
    assert selection["criterion"] == "pseudo_auc"
    assert [e for e, _ in selection["pseudo_auc_history"]] == [1, 2]
    assert selection["epoch"] in (1, 2)
    assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_training_without_train_mixed_uses_train_good(tmp_path):
    data = write_dataset(tmp_path / "data", dims=2, n_train=6, n_test_good=1, n_test_lesion=1, size=32)
    run_bundle(
        "anomalypro",
        "train.json",
        "training",
        {**TINY_TRAIN, "dataset_dir": data, "max_epochs": 1, "batch_size": 4, "ckpt_dir": tmp_path / "models"},
        timeout=300,
    )
    settings = read_state_dict(tmp_path / "models" / "model.pt")["calibration._extra_state"]
    assert settings["preprocessing"]["set_a"] == "train/good"
    assert settings["model_selection"]["criterion"] == "last_epoch"


def test_nifti_folder_inference_writes_maps_healthy_images_and_skips_bad_files(phantoms_3d, trained_tiny, tmp_path):
    lesion = sorted((phantoms_3d / "test" / "lesion").iterdir())[0]
    rows = contract.check_nifti_inference_skips_bad_files(
        "anomalypro", NO_OVERRIDES, trained_tiny, lesion, tmp_path, extra_outputs=("mask", "healthy")
    )
    healthy = nib.load(tmp_path / "out" / lesion.name.replace(".nii.gz", "_healthy.nii.gz")).get_fdata()
    assert np.isfinite(healthy).all() and healthy.min() >= 0.0 and healthy.max() <= 1.0
    slice_scores = [float(r["slice_score"]) for r in rows if r["scored"] == "1"]
    # the mean over the scored slices
    assert float(rows[0]["volume_score"]) == pytest.approx(np.mean(slice_scores), rel=1e-4)


def test_model_pt_alone_rebuilds_the_network(phantoms_3d, trained_tiny, tmp_path):
    lesion = sorted((phantoms_3d / "test" / "lesion").iterdir())[0]
    contract.check_checkpoint_describes_its_network(
        "anomalypro", TINY, trained_tiny, lesion, ("channels", 16), tmp_path
    )


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path):
    data = write_dataset(tmp_path / "data", dims=2, n_train=16, n_test_good=2, n_test_lesion=2, size=64, seed=0)
    contract.check_resume_matches_uninterrupted("anomalypro", {**TINY_TRAIN, "batch_size": 4}, data, tmp_path)


@pytest.mark.slow
def test_torchrun_training_with_two_cpu_processes(phantoms_3d, tmp_path):
    contract.check_torchrun_training("anomalypro", TINY_TRAIN, phantoms_3d, tmp_path, "mean")


def test_torchscript_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_torchscript_export("anomalypro", trained_tiny, TINY["image_size"], tmp_path)


def test_onnx_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_onnx_export("anomalypro", trained_tiny, TINY["image_size"], tmp_path)


def test_evaluation_writes_metrics_and_plots(phantoms_3d, trained_tiny, tmp_path):
    contract.check_evaluation_outputs("anomalypro", NO_OVERRIDES, trained_tiny, phantoms_3d, tmp_path, n_volumes=3)


def test_training_fails_before_starting_on_a_bad_dataset_dir(tmp_path):
    contract.check_training_fails_on_bad_dataset_dir("anomalypro", TINY_TRAIN, tmp_path, "empty")


# ----------------------------------------------------------------------------------------------------------------------
# learning checks (floors from measured runs, docs/README.md)


PHANTOM_OVERRIDES = {"image_size": [64, 64], "channels": 32, "n_res": 3, "critic_channels": 32}
PHANTOM_TRAIN = {"max_epochs": 4, "g_learning_rate": 0.0002, "d_learning_rate": 0.0002}
# Floors set from seeds 0-4 of this configuration (the test trains seed 0) on a 2-core AMD EPYC, image AUROC / pixel
# AUROC in the foreground: one thread (OMP_NUM_THREADS=1) 0.778 / 0.845, 0.750 / 0.943, 0.792 / 0.954, 0.875 / 0.965,
# 0.840 / 0.898; two threads 0.708 / 0.724, 0.743 / 0.943, 0.792 / 0.954, 0.903 / 0.963, 0.847 / 0.898; oneDNN off
# (torch.backends.mkldnn.enabled = False, seeds 0-2) 0.764 / 0.843, 0.729 / 0.943, 0.799 / 0.954. Adversarial
# training amplifies small numerical differences (seed 0 with two threads is the lowest on both), so the floors sit
# 0.06 and 0.03 below the lowest. The foreground figure is asserted (chance 0.5): over all pixels (0.873-0.984) a map
# random inside the phantom brain already scores 0.77. Earlier 10-epoch runs chose epoch 4 by pseudo-AUC, so 4
# epochs hold the selected model.
PHANTOM_IMAGE_AUROC_FLOOR = 0.65
PHANTOM_PIXEL_AUROC_FOREGROUND_FLOOR = 0.69


@pytest.mark.slow
def test_learns_to_detect_phantom_lesions_from_mixed_data(tmp_path):
    """Set A = 20 healthy + 20 lesioned unlabelled phantoms, set B = 40 healthy; image-AUROC floor on the test split."""
    data = write_dataset(
        tmp_path / "data",
        dims=2,
        n_train=40,
        n_test_good=12,
        n_test_lesion=12,
        size=64,
        seed=3,
        n_mixed_good=20,
        n_mixed_lesion=20,
    )
    metrics = contract.train_and_evaluate(
        "anomalypro", data, PHANTOM_OVERRIDES, PHANTOM_TRAIN, {"n_overlays": 0}, tmp_path, (400, 200)
    )
    print("phantom learning metrics:", json.dumps(metrics))
    assert metrics["image_auroc"] >= PHANTOM_IMAGE_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc_foreground"] >= PHANTOM_PIXEL_AUROC_FOREGROUND_FLOOR, metrics


BRATS_OVERRIDES = {"image_size": [64, 64], "channels": 16, "n_res": 2, "critic_channels": 16}
BRATS_TRAIN = {"max_epochs": 1, "g_learning_rate": 0.0002, "d_learning_rate": 0.0002, "pseudo_auc_max_images": 128}
# Floors set from seeds 0 / 1 / 2 of this configuration (the test trains seed 0) on a 2-core AMD EPYC, image AUROC /
# pixel AUROC: one thread (OMP_NUM_THREADS=1) 0.880 / 0.989, 0.894 / 0.989, 0.870 / 0.981; seed 0 with two threads
# 0.883 / 0.989 and with oneDNN off (torch.backends.mkldnn.enabled = False) 0.880 / 0.989. The floors sit 0.07 and 0.05
# below the lowest. (In the foreground: 0.951, 0.954, 0.912; a map random inside the brain scores about 0.85 over all
# pixels.) A 3-epoch run chose epoch 1 by pseudo-AUC (0.882 / 0.963), so one epoch suffices here.
BRATS_IMAGE_AUROC_FLOOR = 0.80
BRATS_PIXEL_AUROC_FLOOR = 0.93


@pytest.mark.slow
@pytest.mark.realdata
def test_brats_slices_image_auroc_floor(tmp_path):
    """Short CPU training on the real BraTS FLAIR slices (set A = train/mixed, set B = train/good)."""
    data = shared_dataset("brats2015_slices")
    metrics = contract.train_and_evaluate(
        "anomalypro", data, BRATS_OVERRIDES, BRATS_TRAIN, {"n_overlays": 0}, tmp_path, (600, 300)
    )
    print("brats metrics:", json.dumps(metrics))
    assert metrics["image_auroc"] >= BRATS_IMAGE_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc"] >= BRATS_PIXEL_AUROC_FLOOR, metrics
