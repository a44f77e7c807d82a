"""Skip-TS bundle: network and loss unit tests, the real configs end to end, bad input, and learning checks."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import pytest
import torch

from tests.bundles import contract
from tests.bundles.conftest import REPO_ROOT, load_bundle_scripts, shared_dataset
from tests.bundles.contract import NO_OVERRIDES
from tools.phantoms import write_dataset

BUNDLE = REPO_ROOT / "bundles" / "skip_ts"
CONFIGS = BUNDLE / "configs"
# A small input for fast CPU tests (paper: 256 x 256).
TINY = {"image_size": [64, 64]}


@pytest.fixture(scope="module")
def scripts():
    return load_bundle_scripts("skip_ts")


SHAPE_CASES = [
    # the paper's input size, ResNet18 teacher
    ("resnet18", (256, 256)),
    # non-square size whose feature maps have odd sizes (50x42 -> 25x21 -> 13x11 -> 7x6)
    ("resnet18", (200, 168)),
    # the paper's teacher, non-square
    ("wide_resnet50_2", (96, 64)),
]


@pytest.mark.parametrize(("teacher", "size"), SHAPE_CASES, ids=["resnet18-256", "resnet18-200x168", "wrn50-96x64"])
def test_student_features_match_teacher_shapes_at_every_level(scripts, teacher, size):
    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=size, teacher=teacher).eval()
    with torch.no_grad():
        out = net.forward_train(torch.rand(2, 1, *size))
    assert len(out.teacher) == len(out.student) == 3
    for level, (t, s) in enumerate(zip(out.teacher, out.student, strict=True), start=1):
        assert t.shape == s.shape, f"level {level}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}"
        assert t.shape[-2:] == torch.Size(-(-d // 2 ** (level + 1)) for d in size)
    assert [t.shape[1] for t in out.teacher] == net.extractor.channels[:3]


@pytest.mark.parametrize(("batch", "height", "width"), [(2, 64, 64), (1, 48, 80)], ids=["square", "non-square"])
def test_eval_output_is_one_channel_map_at_input_size(scripts, batch, height, width):
    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=(64, 64)).eval()
    with torch.no_grad():
        out = net(torch.rand(batch, 1, height, width))
    assert out.shape == (batch, 1, height, width)
    assert torch.isfinite(out).all()
    # a sum of three 1 - cos maps, each in [0, 2]
    assert (out >= -1e-5).all() and (out <= 6 + 1e-5).all()


def test_map_levels_select_the_summed_maps(scripts):
    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=(64, 64)).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        full = net(x)
        parts = []
        for level in (1, 2, 3):
            net.map_levels = [level]
            parts.append(net(x))
    torch.testing.assert_close(full, sum(parts), rtol=1e-5, atol=1e-5)


def test_teacher_strength_weights_discount_only_positions_below_the_reference(scripts):
    teacher = torch.zeros(1, 2, 1, 4)
    teacher[0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 8.0])  # norms 0, 1, 2, 8 against a reference of 2
    weights = scripts.loss.teacher_strength_weights(teacher, 2.0)
    torch.testing.assert_close(weights.flatten(), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    # unfitted (reference 0): no discount wherever the teacher responds at all
    unfitted = scripts.loss.teacher_strength_weights(teacher, 0.0)
    torch.testing.assert_close(unfitted.flatten(), torch.tensor([0.0, 1.0, 1.0, 1.0]))


def _slices_with_brain(n: int = 3, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    foreground = torch.zeros(n, 1, size, size)
    foreground[..., 16:48, 16:64] = 1.0
    return torch.rand(n, 1, size, size) * foreground, foreground


def test_foreground_statistics_are_the_median_teacher_norm_inside_the_foreground(scripts):
    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=(64, 64)).eval()
    image, foreground = _slices_with_brain()
    net.fit_foreground_statistics([(image[:2], foreground[:2]), (image[2:], foreground[2:])])
    with torch.no_grad():
        features = net.forward_train(image).teacher
    for level, feature in enumerate(features):
        stride = 64 // feature.shape[-1]
        inside = foreground[:, :, ::stride, ::stride].bool()  # the box is aligned with every level's cells
        expected = feature.norm(dim=1, keepdim=True)[inside].double().median().float()
        torch.testing.assert_close(net.teacher_norm_reference[level], expected)
        assert expected < feature.norm(dim=1).max()  # a real reference: some positions are above it


def test_foreground_statistics_need_a_batch(scripts):
    net = scripts.network.SkipTS(image_size=(64, 64))
    with pytest.raises(ValueError, match="needs at least one batch of training slices"):
        net.fit_foreground_statistics([])
    assert not net.teacher_norm_reference.any()


def test_teacher_norm_weighting_scales_each_level_map_and_none_is_eq_1(scripts):
    torch.manual_seed(0)
    weighted = scripts.network.SkipTS(image_size=(64, 64)).eval()
    paper = scripts.network.SkipTS(image_size=(64, 64), map_weighting="none").eval()
    paper.load_state_dict(weighted.state_dict())
    image, foreground = _slices_with_brain()
    weighted.fit_foreground_statistics([(image, foreground)])
    paper.fit_foreground_statistics([(image, foreground)])  # fitted too, so the checkpoint reads out either way
    torch.testing.assert_close(paper.teacher_norm_reference, weighted.teacher_norm_reference)
    with torch.no_grad():
        plain = paper.level_maps(image)
        discounted = weighted.level_maps(image)
        teacher = weighted.forward_train(image).teacher
    for level, (m, d, t) in enumerate(zip(plain, discounted, teacher, strict=True)):
        weights = (t.norm(dim=1, keepdim=True) / weighted.teacher_norm_reference[level]).clamp(max=1.0)
        torch.testing.assert_close(d, m * weights)
        assert (weights < 1).any() and (weights == 1).any()


def test_checkpoints_load_whatever_the_map_weighting(scripts, caplog):
    torch.manual_seed(0)
    weighted = scripts.network.SkipTS(image_size=(64, 64))
    weighted.fit_foreground_statistics([_slices_with_brain()])
    paper = scripts.network.SkipTS(image_size=(64, 64), map_weighting="none")
    paper.load_state_dict(weighted.state_dict())  # a weighted checkpoint evaluated with eq. 1
    torch.testing.assert_close(paper.teacher_norm_reference, weighted.teacher_norm_reference)
    older = {k: v for k, v in paper.state_dict().items() if k != "teacher_norm_reference"}
    paper.load_state_dict(older)  # written before the option existed
    assert not paper.teacher_norm_reference.any()
    with caplog.at_level(logging.WARNING):
        weighted.load_state_dict(older)
    assert "no teacher norm reference" in caplog.text
    assert not weighted.teacher_norm_reference.any()


def test_training_step_updates_student_and_leaves_teacher_unchanged(scripts):
    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=(64, 64))
    net.train()
    assert not net.teacher.training and not any(m.training for m in net.teacher.modules())
    assert net.student.training
    teacher_before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in net.student.state_dict().items()}
    params = [p for p in net.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in net.teacher.parameters())
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))
    loss = scripts.loss.SkipTSLoss()(net.forward_train(torch.rand(4, 1, 64, 64)))
    loss.backward()
    grads = [p.grad for p in net.student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    for key, value in net.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    changed = [k for k, v in net.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert changed, "the student did not change"


def test_batchnorm_reestimation_changes_only_the_student_statistics(scripts):
    from common.training import BatchNormStatisticsHandler

    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=(64, 64)).eval()
    teacher_before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    student_weights = {k: v.clone() for k, v in net.student.named_parameters()}
    loader = [{"image": torch.rand(4, 1, 64, 64)} for _ in range(2)]
    BatchNormStatisticsHandler(net, loader, "cpu")()
    for key, value in net.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    for key, value in net.student.named_parameters():
        assert torch.equal(value, student_weights[key]), key
    norms = [m for m in net.student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 2 for m in norms)
    assert not any(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    assert not net.training


def test_without_skip_connections_the_student_ignores_intermediate_teacher_features(scripts):
    torch.manual_seed(0)
    teacher = [torch.rand(1, c, s, s) for c, s in ((64, 16), (128, 8), (256, 4), (512, 2))]
    altered = [t.clone() for t in teacher]
    altered[1] += 1.0
    altered[2] += 1.0
    for skip, same in ((False, True), (True, False)):
        decoder = scripts.network.StudentDecoder([64, 128, 256, 512], skip_connections=skip).eval()
        with torch.no_grad():
            equal = torch.equal(decoder(teacher)[0], decoder(altered)[0])
        assert equal is same, f"skip_connections={skip}"


def test_mac_loss_is_zero_for_identical_maps_and_positive_otherwise(scripts):
    mac = scripts.loss.multiscale_anomaly_consistency
    torch.manual_seed(0)
    base = torch.rand(2, 1, 8, 8)
    # the same map at three resolutions: bilinear upsampling of a constant map changes nothing
    constant = [torch.full((2, 1, s, s), 0.3) for s in (16, 8, 4)]
    assert float(mac([base, base.clone(), base.clone()])) == 0.0
    assert float(mac(constant)) == pytest.approx(0.0, abs=1e-12)
    other = base.clone()
    other[0, 0, 2, 2] += 0.5
    assert float(mac([base, other])) == pytest.approx(0.25 / base[0, 0].numel() / 2)
    assert float(mac([base, torch.rand(2, 1, 4, 4)])) > 0


def test_loss_terms_follow_equations_2_to_5(scripts):
    loss_module = scripts.loss
    torch.manual_seed(0)
    teacher = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    student = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    maps = [loss_module.cosine_distance_map(t, s) for t, s in zip(teacher, student, strict=True)]
    sim = sum(m.mean() for m in maps)
    mac = loss_module.multiscale_anomaly_consistency(maps)
    assert float(mac) > 0
    full = loss_module.SkipTSLoss(alpha=1.0, beta=0.05)((teacher, student))
    torch.testing.assert_close(full, sim + 0.05 * mac)
    torch.testing.assert_close(loss_module.SkipTSLoss(beta=0.0)((teacher, student)), sim)
    mse = sum(torch.mean((t - s) ** 2) for t, s in zip(teacher, student, strict=True))
    torch.testing.assert_close(loss_module.SkipTSLoss(beta=0.0, similarity="mse")((teacher, student)), mse)
    assert float(loss_module.SkipTSLoss()((teacher, teacher))) == pytest.approx(0.0, abs=1e-6)
    # the authors' released form: one cosine per sample over the flattened map (not the mean of the per-position map)
    flat = sum(
        torch.mean(1 - torch.nn.functional.cosine_similarity(t.reshape(2, -1), s.reshape(2, -1), dim=1))
        for t, s in zip(teacher, student, strict=True)
    )
    torch.testing.assert_close(loss_module.SkipTSLoss(beta=0.0, similarity="cosine_flat")((teacher, student)), flat)
    assert abs(float(flat) - float(sim)) > 1e-3
    # a map that is large where the features are large: the flattened distance weighs those positions more
    t1 = torch.ones(1, 2, 1, 2)
    t1[..., 1] = 10.0
    s1 = t1.clone()
    s1[0, :, 0, 0] = torch.tensor([1.0, -1.0])  # orthogonal at the small position only
    assert float(loss_module.flattened_cosine_distance(t1, s1)) < float(loss_module.cosine_distance_map(t1, s1).mean())
    # eq. 1 against a hand-computed pair: orthogonal vectors give 1, opposite vectors give 2
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert float(loss_module.cosine_distance_map(a, torch.tensor([0.0, 3.0]).view(1, 2, 1, 1))) == pytest.approx(1.0)
    assert float(loss_module.cosine_distance_map(a, -a)) == pytest.approx(2.0)


def test_teacher_weights_load_from_a_local_torchvision_state_dict(scripts, tmp_path, caplog):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        net = scripts.network.SkipTS(image_size=(64, 64), teacher_weights=str(path))
    assert "random weights" not in caplog.text
    own = net.teacher.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(own[key], reference.state_dict()[key]), key
    # the teacher computes what torchvision computes on the repeated, ImageNet-normalised grayscale image
    x = torch.rand(1, 1, 64, 64)
    reference.eval()
    normalised = (
        x.expand(-1, 3, -1, -1) - torch.tensor(scripts.network.IMAGENET_MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(scripts.network.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(normalised)))))
        torch.testing.assert_close(net.extractor(x)[0], expected)


RANDOM_TEACHER_CASES = [
    # timm's default random init: residual branches silenced by a zero last BatchNorm, BatchNorm statistics kept
    ("timm", True, False),
    # residual branches active, BatchNorm statistics re-estimated on training images
    ("recalibrated", False, True),
]


@pytest.mark.parametrize(("mode", "zeroed", "recalibrated"), RANDOM_TEACHER_CASES, ids=["timm", "recalibrated"])
def test_random_teacher_initialisation_modes(scripts, mode, zeroed, recalibrated):
    torch.manual_seed(0)
    net = scripts.network.SkipTS(image_size=(64, 64), random_teacher=mode)
    last_norms = [block.bn2.weight for block in net.teacher.layer2]
    assert all(bool((w == 0).all()) is zeroed for w in last_norms)
    assert net.extractor.recalibrate_batchnorm is recalibrated
    net.extractor.fit_statistics([torch.rand(4, 1, 64, 64)])
    running_mean = net.teacher.layer3[0].bn1.running_mean
    assert bool((running_mean == 0).all()) is not recalibrated


def test_random_teacher_logs_a_warning(scripts, caplog):
    with caplog.at_level(logging.WARNING):
        scripts.network.SkipTS(image_size=(64, 64))
    assert "random weights" in caplog.text and "ImageNet" in caplog.text


BAD_CONFIGS = [
    # unknown teacher
    ({"teacher": "vgg16"}, "teacher"),
    # map levels outside {1, 2, 3}
    ({"map_levels": [0, 4]}, "map_levels"),
    # image size below the teacher's minimum
    ({"image_size": (16, 16)}, "image_size"),
    # a missing teacher weight file
    ({"teacher_weights": "/nonexistent/resnet18.pth"}, "resnet18.pth"),
    # an unknown map weighting
    ({"map_weighting": "norm"}, "map_weighting"),
]


@pytest.mark.parametrize(
    ("kwargs", "word"), BAD_CONFIGS, ids=["teacher", "map-levels", "image-size", "weights", "map-weighting"]
)
def test_bad_configuration_raises(scripts, kwargs, word):
    with pytest.raises((ValueError, FileNotFoundError), match=word):
        scripts.network.SkipTS(**kwargs)


SWITCHES = ("skip_connections", "standardize_features", "normalize_input", "from_checkpoint")


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("value", ["false", "False", 0, None], ids=["str-false", "str-False", "int", "none"])
def test_non_bool_switch_raises_instead_of_being_truthy(scripts, name, value):
    # a lower-case "--skip_connections false" reaches the network as the string "false", which is truthy
    with pytest.raises(TypeError, match=rf"{name} must be True or False.*--{name} False"):
        scripts.network.SkipTS(image_size=(64, 64), **{name: value})


def test_student_decoder_rejects_a_string_skip_switch(scripts):
    with pytest.raises(TypeError, match="skip_connections must be True or False"):
        scripts.network.StudentDecoder([64, 128, 256, 512], skip_connections="false")


def _documented_overrides(text: str) -> list[tuple[str, str]]:
    """``(key, value)`` of every ``--key value`` in the README's shell commands."""
    pairs = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        command = block.replace("\\\n", " ")
        pairs += re.findall(r"--(\w+)\s+([^\s-][^\s]*)", command)
    return pairs


def test_documented_boolean_overrides_reach_the_network_as_bools(scripts):
    """The README's ablation commands parse (as ``monai.bundle run`` does, through fire) to real booleans."""
    fire_parser = pytest.importorskip("fire.parser")
    pairs = _documented_overrides((BUNDLE / "docs" / "README.md").read_text())
    switches = [(key, fire_parser.DefaultParseValue(value)) for key, value in pairs if key in SWITCHES]
    assert ("skip_connections", False) in switches, pairs
    for key, value in switches:
        assert isinstance(value, bool), f"--{key} {value!r} is not parsed as a bool"
    # fire itself: the capitalised form is a bool, the lower-case form a (truthy) string
    assert fire_parser.DefaultParseValue("False") is False
    assert fire_parser.DefaultParseValue("false") == "false"
    net = scripts.network.SkipTS(image_size=(64, 64), **dict(switches))
    assert net.student.skip_connections is False


def test_bad_loss_configuration_raises(scripts):
    with pytest.raises(ValueError, match="similarity"):
        scripts.loss.SkipTSLoss(similarity="l1")
    with pytest.raises(ValueError, match="beta"):
        scripts.loss.SkipTSLoss(beta=-1.0)


@pytest.mark.parametrize(
    ("config", "workflow_type"), [("train.json", "train"), ("inference.json", "infer")], ids=["train", "infer"]
)
def test_configs_define_the_bundle_properties(phantoms_3d, tmp_path, config, workflow_type):
    contract.check_config_properties("skip_ts", config, workflow_type, phantoms_3d, tmp_path)


def test_train_config_holds_the_paper_settings():
    config = json.loads((CONFIGS / "train.json").read_text())
    assert config["learning_rate"] == 0.005
    assert config["betas"] == [0.5, 0.999]
    # a measured departure from the paper (docs "Departures from the paper"); "constant" selects the paper's rate
    assert config["lr_decay"] == "cosine"
    # running BatchNorm averages at inference; re-estimating them was measured worse at 4-8 epochs (docs)
    assert config["reestimate_batchnorm"] is False
    assert config["batch_size"] == 16
    assert config["image_size"] == [256, 256]
    assert (config["alpha"], config["beta"], config["similarity"]) == (1.0, 0.05, "cosine")
    assert (config["score_method"], config["smoothing_sigma"]) == ("max", 4.0)
    assert config["teacher_weights"] is None
    for name in ("inference.json", "evaluate.json"):
        other = json.loads((CONFIGS / name).read_text())
        for key in ("image_size", "teacher", "skip_connections", "map_levels"):  # architecture: from model.pt
            assert other[key] == f"$@architecture.get('{key}', {config[key]!r})", f"{name}: {key}"
        for key in ("score_method", "smoothing_sigma"):
            assert other[key] == config[key], f"{name}: {key}"


def test_batchnorm_reestimation_runs_before_calibration_and_saving_when_switched_on():
    """Handlers at the same event run in list order: thresholds and model.pt must see the re-estimated statistics."""
    config = json.loads((CONFIGS / "train.json").read_text())
    targets = [h["_target_"].rsplit(".", 1)[-1] for h in config["train"]["handlers"]]
    position = targets.index("BatchNormStatisticsHandler")
    assert position < targets.index("CalibrationHandler") < targets.index("CheckpointSaver")
    assert config["train"]["handlers"][position]["enabled"] == "@reestimate_batchnorm"


def test_metadata_verifies_against_the_schema():
    contract.check_metadata_verifies("skip_ts")


@pytest.fixture(scope="module")
def trained_tiny(phantoms_3d, tmp_path_factory) -> Path:
    """Train for one epoch through ``python -m monai.bundle run training`` (real config)."""
    out = tmp_path_factory.mktemp("skip_ts_run")
    return contract.train("skip_ts", {**TINY, "dataset_dir": phantoms_3d, "max_epochs": 1, "batch_size": 8}, out)


def test_training_writes_checkpoint_with_calibration(trained_tiny):
    state = contract.check_checkpoint_calibrated(trained_tiny, TINY["image_size"], "max")
    assert bool(state["extractor.fitted"])
    assert any(k.startswith("student.decoders.2.up.") for k in state)
    settings = state["calibration._extra_state"]
    assert settings["scoring"] == {"method": "max", "topk_fraction": 0.01, "smoothing_sigma": 4.0}


def test_nifti_folder_inference_skips_bad_files(phantoms_3d, trained_tiny, tmp_path):
    lesion = sorted((phantoms_3d / "test" / "lesion").iterdir())[0]
    rows = contract.check_nifti_inference_skips_bad_files("skip_ts", NO_OVERRIDES, trained_tiny, lesion, tmp_path)
    assert len(rows) == nib.load(lesion).shape[2]  # one row per slice


@pytest.mark.slow
def test_torchrun_training_with_two_cpu_processes(phantoms_3d, tmp_path):
    contract.check_torchrun_training("skip_ts", TINY, phantoms_3d, tmp_path, "max")


def test_torchscript_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_torchscript_export("skip_ts", trained_tiny, TINY["image_size"], tmp_path)


def test_onnx_export_matches_eager_and_runs_without_the_repository(trained_tiny, tmp_path):
    contract.check_onnx_export("skip_ts", trained_tiny, TINY["image_size"], tmp_path)


def test_evaluation_writes_metrics_and_plots(phantoms_3d, trained_tiny, tmp_path):
    contract.check_evaluation_outputs("skip_ts", NO_OVERRIDES, trained_tiny, phantoms_3d, tmp_path, n_volumes=3)


def test_training_fails_before_starting_on_a_bad_dataset_dir(tmp_path):
    contract.check_training_fails_on_bad_dataset_dir("skip_ts", TINY, tmp_path, "empty")


# The real-data checks train at 128 x 128 (paper: 256 x 256).
REAL_SIZE = {"image_size": [128, 128]}
# Learning floors. Each is set from several training seeds (the tests train seed 0) and from seed 0 (or the lowest
# seed) on other float paths: two threads (OMP_NUM_THREADS=2) and oneDNN off (torch.backends.mkldnn.enabled = False),
# one thread otherwise, on a 2-core AMD EPYC; each floor sits at least 0.03 below the lowest run, further where the
# spread is wide. Another CPU's kernels train another trajectory, like another seed.
# Phantoms, 64x64, 12 epochs, batch 8, default teacher-norm weighting. Pixel AUROC in the brain (chance 0.5), seeds
# 0-4 one thread: 0.829, 0.788, 0.869, 0.792, 0.818; two threads 0.829 (seed 0) and 0.788 (seed 1); oneDNN off 0.830
# and 0.786. The image AUROC (12 normal and 12 lesion images: chance 0.5 +- 0.12) is at chance for some seeds at this
# budget, 0.799, 0.604, 0.799, 0.521, 0.792 (oneDNN off: 0.778 and 0.632), so it carries no floor here; the BraTS
# test below holds the image-level floor.
PHANTOM_EPOCHS = 12
PHANTOM_PIXEL_AUROC_FOREGROUND_FLOOR = 0.75
# BraTS, 128x128, 4 epochs, one thread, the shipped configuration (skip connections, cosine learning-rate decay,
# teacher-norm weighting). Image AUROC / pixel AUROC in the brain, seeds 0 / 1 / 2: one thread 0.975 / 0.970,
# 0.966 / 0.962, 0.976 / 0.971; oneDNN off 0.971 / 0.931, 0.962 / 0.960, 0.977 / 0.970; seed 0 with two threads
# 0.975 / 0.969; seed 0, one thread, on an Intel Xeon: pixel AUROC in the brain 0.919. The paper's map on the
# one-thread checkpoints: image AUROC 0.896 / 0.721 / 0.796. The image floor is the target every seed must reach;
# the in-brain floor sits 0.03 below the lowest (the Xeon's).
BRATS_IMAGE_AUROC_FLOOR = 0.90
BRATS_PIXEL_AUROC_FOREGROUND_FLOOR = 0.89
BRATS_TRAINING = {"max_epochs": 4}
# Head CT, 128x128, 12 epochs, on the paper's map (map_weighting "none"). Image AUROC, seeds 0-4 one thread: 0.634,
# 0.709, 0.697, 0.673, 0.739; seed 0 with two threads 0.620, oneDNN off 0.624. With 40 normal and 100 haemorrhage
# images chance is 0.5 +- 0.05. Six epochs were too few for a floor above chance (seeds 0-2: 0.569, 0.702, 0.703;
# seed 0 with oneDNN off 0.560); twenty gave no more (0.635, 0.698, 0.681). The default teacher-norm weighting
# reads a 6-epoch checkpoint at 0.516, within chance, so this floor is checked on the paper's map, which stays
# selectable (bundles/skip_ts/docs/README.md).
HEADCT_EPOCHS = 12
HEADCT_IMAGE_AUROC_FLOOR = 0.59


@pytest.mark.slow
def test_learns_to_detect_phantom_lesions(tmp_path):
    """Short CPU training on 2D phantoms with a random teacher."""
    data = write_dataset(tmp_path / "data", dims=2, n_train=40, n_test_good=12, n_test_lesion=12, size=64, seed=3)
    train = {"max_epochs": PHANTOM_EPOCHS, "batch_size": 8}
    metrics = contract.train_and_evaluate("skip_ts", data, TINY, train, {"n_overlays": 0}, tmp_path, (600, 300))
    print("phantom learning metrics:", json.dumps(metrics))
    assert metrics["pixel_auroc_foreground"] >= PHANTOM_PIXEL_AUROC_FOREGROUND_FLOOR, metrics


@pytest.mark.slow
@pytest.mark.realdata
def test_brats_slices_image_auroc_floor(tmp_path, monkeypatch):
    """Short CPU training on the real BraTS FLAIR slices (128x128, random teacher, one thread)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the bundle subprocesses inherit it
    data = shared_dataset("brats2015_slices")
    metrics = contract.train_and_evaluate(
        "skip_ts", data, REAL_SIZE, BRATS_TRAINING, {"n_overlays": 0}, tmp_path, (600, 300)
    )
    print("brats metrics:", json.dumps(metrics))
    assert metrics["image_auroc"] >= BRATS_IMAGE_AUROC_FLOOR, metrics
    assert metrics["pixel_auroc_foreground"] >= BRATS_PIXEL_AUROC_FOREGROUND_FLOOR, metrics


@pytest.mark.slow
@pytest.mark.realdata
def test_headct_image_auroc_floor(tmp_path, monkeypatch):
    """Short CPU training on the real head CT images (128x128, random teacher, one thread, the paper's map)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the bundle subprocesses inherit it
    data = shared_dataset("headct")
    train = {"max_epochs": HEADCT_EPOCHS, "map_weighting": "none"}
    metrics = contract.train_and_evaluate("skip_ts", data, REAL_SIZE, train, {"n_overlays": 0}, tmp_path, (600, 300))
    print("headct metrics:", json.dumps(metrics))
    assert metrics["image_auroc"] >= HEADCT_IMAGE_AUROC_FLOOR, metrics
