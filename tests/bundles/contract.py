"""Checks every bundle must pass (DESIGN.md's bundle contract), shared by the per-bundle test modules.

Each function drives a bundle the way a user does (``python -m monai.bundle`` in a subprocess, or MONAI's
``ConfigWorkflow``) and asserts what the contract promises; the bundle test modules call them with their own tiny
network settings.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from common.checkpoint import read_description
from common.training import load_thresholds, read_state_dict
from tests.bundles.conftest import REPO_ROOT, SCHEMA
from tests.comparisons import assert_maps_close, assert_masks_agree_off_threshold
from tools.bundles import BundleRunError, run_bundle
from tools.components import bundle_scripts_on_path
from tools.processes import run_python_module

METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1",
    "pixel_auroc",
    "pixel_auroc_foreground",
    "aupro",
    "best_dice",
    "dice",
    "volume_auroc",
)


NO_OVERRIDES: Mapping[str, Any] = {}
"""Inference and evaluation pass no architecture keys: a trained ``model.pt`` describes its network."""


def configs_dir(bundle: str) -> Path:
    """``bundles/<bundle>/configs``."""
    return REPO_ROOT / "bundles" / bundle / "configs"


def check_config_properties(
    bundle: str,
    config: str,
    workflow_type: str,
    dataset_dir: Path,
    output_dir: Path,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """The config initialises as a MONAI ``ConfigWorkflow`` and defines every required bundle property.

    ``overrides`` are further config values handed to ``ConfigWorkflow`` (e.g. a tiny network).
    """
    root = REPO_ROOT / "bundles" / bundle
    with bundle_scripts_on_path(root):
        workflow = ConfigWorkflow(
            config_file=str(configs_dir(bundle) / config),
            meta_file=str(configs_dir(bundle) / "metadata.json"),
            logging_file=str(configs_dir(bundle) / "logging.conf"),
            workflow_type=workflow_type,
            dataset_dir=str(dataset_dir),
            output_dir=str(output_dir),
            bundle_root=str(root),
            **(overrides or {}),
        )
        workflow.initialize()
        assert not workflow.check_properties()


def check_metadata_verifies(bundle: str, meta_file: Path | None = None) -> None:
    """``metadata.json`` passes ``verify_metadata`` offline against MONAI's schema (skipped when it is absent).

    ``meta_file`` checks another copy of the bundle's metadata (e.g. an exported bundle's).
    """
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} is absent")
    meta = str(meta_file or configs_dir(bundle) / "metadata.json")
    result = run_python_module(
        "monai.bundle", ["verify_metadata", "--meta_file", meta, "--filepath", str(SCHEMA)], REPO_ROOT, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


def train(bundle: str, overrides: Mapping[str, Any], out: Path, timeout: int = 600) -> Path:
    """Train through ``train.json`` (``python -m monai.bundle run training``); returns the final ``model.pt``."""
    run_bundle(
        bundle,
        "train.json",
        "training",
        {**overrides, "ckpt_dir": out / "models", "output_dir": out / "train"},
        timeout=timeout,
    )
    return out / "models" / "model.pt"


def check_checkpoint_calibrated(checkpoint: Path, image_size: list[int], score_method: str) -> dict[str, Any]:
    """The final checkpoint holds finite thresholds, fitted feature statistics, the training settings and the
    network's description (``common.checkpoint``): its constructor arguments and the bundle's name and version."""
    description = read_description(checkpoint)
    assert description is not None and description["arguments"]["image_size"] == image_size
    metadata = json.loads((configs_dir(description["bundle"]["id"]) / "metadata.json").read_text())
    assert description["bundle"]["version"] == metadata["version"]
    assert description["bundle"]["name"] == metadata["name"]
    state = read_state_dict(checkpoint)
    assert np.isfinite(float(state["calibration.pixel_threshold"]))
    assert np.isfinite(float(state["calibration.image_threshold"]))
    settings = state["calibration._extra_state"]
    assert settings["preprocessing"]["image_size"] == image_size
    assert settings["scoring"]["method"] == score_method
    return state


def _copy_with_brain_mask(volume: Path, inputs: Path) -> Path:
    """Copy a dataset volume into ``inputs`` with its brain mask beside it (``inputs/brain_mask/<name>``, which takes
    precedence over brain extraction); returns the dataset's brain-mask file."""
    brain_mask = volume.parents[2] / "brain_mask" / volume.parent.name / volume.name
    (inputs / "brain_mask").mkdir(parents=True)
    (inputs / volume.name).write_bytes(volume.read_bytes())
    (inputs / "brain_mask" / volume.name).write_bytes(brain_mask.read_bytes())
    return brain_mask


def check_nifti_inference_skips_bad_files(
    bundle: str,
    overrides: Mapping[str, Any],
    checkpoint: Path,
    lesion_volume: Path,
    tmp_path: Path,
    extra_outputs: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Folder inference writes maps on the input grid and ``scores.csv``, reports bad files, never touches inputs.

    ``extra_outputs`` names further ``<stem>_<suffix>.nii.gz`` files (``"mask"`` included) that must also be float32
    volumes on the input grid. Returns the rows of ``scores.csv`` for bundle-specific checks.
    """
    inputs = tmp_path / "in"
    brain_mask = _copy_with_brain_mask(lesion_volume, inputs)
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), inputs / "four_d.nii.gz")
    before = {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    out = tmp_path / "out"
    run_bundle(
        bundle,
        "inference.json",
        "run",
        {**overrides, "dataset_dir": inputs, "output_dir": out, "ckpt_path": checkpoint},
        timeout=300,
    )
    reference = nib.load(lesion_volume)
    anomaly = nib.load(out / lesion_volume.name.replace(".nii.gz", "_anomaly.nii.gz"))
    assert anomaly.shape == reference.shape
    assert np.allclose(anomaly.affine, reference.affine)
    assert anomaly.get_data_dtype() == np.float32
    assert np.isfinite(np.asarray(anomaly.dataobj)).all()
    assert (out / lesion_volume.name.replace(".nii.gz", "_mask.nii.gz")).is_file()
    written_brain = nib.load(out / lesion_volume.name.replace(".nii.gz", "_brain_mask.nii.gz"))
    assert np.array_equal(np.asarray(written_brain.dataobj) > 0, np.asarray(nib.load(brain_mask).dataobj) > 0)
    anomaly_map = np.asarray(anomaly.dataobj)
    assert not anomaly_map[np.asarray(nib.load(brain_mask).dataobj) == 0].any(), "map nonzero outside the brain"
    for suffix in extra_outputs:
        written = nib.load(out / lesion_volume.name.replace(".nii.gz", f"_{suffix}.nii.gz"))
        assert written.shape == reference.shape, suffix
        assert np.allclose(written.affine, reference.affine), suffix
        assert written.get_data_dtype() == np.float32, suffix
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {r["file"] for r in rows} == {str(inputs / lesion_volume.name)}
    scored = [r for r in rows if r["scored"] == "1"]
    assert scored and all(np.isfinite(float(r["slice_score"])) for r in scored)
    assert all(r["slice_score"] == "" for r in rows if r["scored"] == "0")
    with open(out / "failed.csv") as handle:
        failed = {Path(r["file"]).name: r["error"] for r in csv.DictReader(handle)}
    assert set(failed) == {"corrupt.nii.gz", "four_d.nii.gz"}
    assert "cannot be read" in failed["corrupt.nii.gz"]
    assert "expected a 2D image or a 3D volume" in failed["four_d.nii.gz"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()} == before, "inputs were modified"
    return rows


def check_distributed_inference_matches_one_process(
    bundle: str, checkpoint: Path, volumes: Sequence[Path], tmp_path: Path
) -> None:
    """Inference under ``torchrun`` with 2 CPU processes writes what one process writes, bad file included.

    The folder holds the volumes (with their brain masks) and one corrupt file; the two processes take every other
    file, and rank 0 merges ``scores.csv`` and ``failed.csv`` in file order. The processes may run other thread
    counts than the single one (``torchrun`` gives each one thread unless told otherwise), so maps and scores are
    compared to a tolerance and masks and flags everywhere but at their thresholds (``tests/comparisons.py``).
    """
    inputs = tmp_path / "in"
    (inputs / "brain_mask").mkdir(parents=True)
    for volume in volumes:
        brain_mask = volume.parents[2] / "brain_mask" / volume.parent.name / volume.name
        (inputs / volume.name).write_bytes(volume.read_bytes())
        (inputs / "brain_mask" / volume.name).write_bytes(brain_mask.read_bytes())
    (inputs / "b_corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"out_{processes}"
        settings = {"dataset_dir": inputs, "output_dir": out, "ckpt_path": checkpoint, "device": "cpu"}
        run_bundle(bundle, "inference.json", "run", settings, timeout=300, nproc_per_node=processes)
        outputs[processes] = out
    one, two = outputs[1], outputs[2]
    pixel_threshold, image_threshold = load_thresholds(checkpoint)
    _assert_scores_agree(two / "scores.csv", one / "scores.csv", image_threshold)
    assert (two / "failed.csv").read_text() == (one / "failed.csv").read_text()
    assert "b_corrupt.nii.gz" in (two / "failed.csv").read_text()
    files = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == files
    for name in files:
        if not name.endswith(".nii.gz"):
            continue
        got, expected = (np.asarray(nib.load(folder / name).dataobj) for folder in (two, one))
        if name.endswith("_anomaly.nii.gz"):
            assert_maps_close(got, expected)
        elif name.endswith("_mask.nii.gz") and not name.endswith("_brain_mask.nii.gz"):
            score_map = np.asarray(nib.load(one / name.replace("_mask.nii.gz", "_anomaly.nii.gz")).dataobj)
            assert_masks_agree_off_threshold(got, expected, score_map, pixel_threshold)
        else:  # the brain masks given beside the inputs, not computed by the network
            assert np.array_equal(got, expected), name


def _assert_scores_agree(got_csv: Path, expected_csv: Path, image_threshold: float) -> None:
    """Two ``scores.csv`` list the same slices; scores agree to the maps' tolerance (written to 6 significant digits,
    well inside it), flags wherever the score is not at the image threshold."""
    with open(got_csv) as handle:
        got = list(csv.DictReader(handle))
    with open(expected_csv) as handle:
        expected = list(csv.DictReader(handle))
    keys = ("file", "slice", "scored")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in expected]
    for score, flag in (("slice_score", "slice_anomalous"), ("volume_score", "volume_anomalous")):
        assert [r[score] == "" for r in got] == [r[score] == "" for r in expected], score
        assert [r[flag] for r in got if r[score] == ""] == [r[flag] for r in expected if r[score] == ""], flag
        rows = [(a, b) for a, b in zip(got, expected, strict=True) if b[score] != ""]
        values = np.array([[float(a[score]), float(b[score])] for a, b in rows]).reshape(-1, 2)
        assert_maps_close(values[:, 0], values[:, 1])
        flags = np.array([[int(a[flag]), int(b[flag])] for a, b in rows]).reshape(-1, 2)
        assert_masks_agree_off_threshold(flags[:, 0], flags[:, 1], values[:, 1], image_threshold)


def check_torchrun_training(
    bundle: str, overrides: Mapping[str, Any], data: Path, tmp_path: Path, score_method: str
) -> None:
    """``train.json`` + ``multi_gpu_train.json`` under ``torchrun`` with 2 CPU processes (gloo) on tiny data.

    One ``model.pt`` with calibrated thresholds (rank 0 alone calibrates and writes), one progress line per epoch
    (rank 0 alone logs), and batch inference works with the checkpoint.
    """
    out = tmp_path / "torchrun"
    settings = {
        **overrides,
        "dataset_dir": data,
        "ckpt_dir": out / "models",
        "output_dir": out / "train",
        "max_epochs": 2,
        "batch_size": 4,
        "device": "cpu",
    }
    multi = configs_dir(bundle) / "multi_gpu_train.json"
    result = run_bundle(
        bundle, "train.json", "training", settings, timeout=600, extra_configs=[multi], nproc_per_node=2
    )
    output = result.stdout + result.stderr
    assert output.count("[progress] epoch 1/2:") == 1 and output.count("[progress] epoch 2/2:") == 1, output[-3000:]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]
    model = out / "models" / "model.pt"
    check_checkpoint_calibrated(model, list(overrides["image_size"]), score_method)
    lesion = data / "test" / "lesion"
    run_bundle(bundle, "inference.json", "run", {"dataset_dir": lesion, "output_dir": out / "maps", "ckpt_path": model})
    with open(out / "maps" / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(r["file"]).name for r in rows} == {p.name for p in lesion.iterdir() if p.is_file()}


_RUN_WITHOUT_REPOSITORY = """
import sys
for package in ("common", "scripts", "tools", "tests", "bundles"):
    sys.modules[package] = None  # importing any of them now fails: the graph must not need them
import torch
graph = torch.jit.load(sys.argv[1], map_location="cpu").eval()
size = [int(v) for v in sys.argv[2:]]
with torch.no_grad():
    out = graph(torch.rand(2, 1, *size))
assert torch.isfinite(out).all()
print(list(out.shape))
"""


def check_torchscript_export(bundle: str, checkpoint: Path, image_size: Sequence[int], tmp_path: Path) -> None:
    """``ckpt_export`` (traced, fp32) equals eager to 1e-4; a process that cannot import the repository runs it."""
    from tools.torchscript import TOLERANCE, export_torchscript

    exported = tmp_path / "model.ts"
    assert export_torchscript(bundle, checkpoint, exported) <= TOLERANCE
    result = subprocess.run(
        [sys.executable, "-I", "-c", _RUN_WITHOUT_REPOSITORY, str(exported), *(str(v) for v in image_size)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str([2, 1, *image_size])


_RUN_ONNX_WITHOUT_REPOSITORY = """
import sys
for package in ("common", "scripts", "tools", "tests", "bundles", "torch"):
    sys.modules[package] = None  # the ONNX graph needs neither this repository nor PyTorch
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
batch, size = int(sys.argv[2]), [int(v) for v in sys.argv[3:]]
(out,) = session.run(None, {"image": np.random.default_rng(0).random((batch, 1, *size), dtype=np.float32)})
assert np.isfinite(out).all()
print(list(out.shape))
"""


def check_onnx_export(bundle: str, checkpoint: Path, image_size: Sequence[int], tmp_path: Path) -> None:
    """ONNX export equals eager (onnxruntime, 1e-4 of the maps' scale); a process without the repository runs it."""
    pytest.importorskip("onnxruntime")
    from tools.onnx_export import FIXED_BATCH_BUNDLES, RELATIVE_TOLERANCE, export_onnx

    exported = tmp_path / "model.onnx"
    assert export_onnx(bundle, checkpoint, exported) <= RELATIVE_TOLERANCE
    batch = 1 if bundle in FIXED_BATCH_BUNDLES else 2
    result = subprocess.run(
        [sys.executable, "-I", "-c", _RUN_ONNX_WITHOUT_REPOSITORY, str(exported), str(batch), *map(str, image_size)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str([batch, 1, *image_size])


def check_evaluation_outputs(
    bundle: str, overrides: Mapping[str, Any], checkpoint: Path, dataset_dir: Path, out: Path, n_volumes: int
) -> dict[str, Any]:
    """``evaluate.json`` writes ``metrics.json`` with every documented key, and its plots."""
    run_bundle(
        bundle,
        "evaluate.json",
        "run",
        {**overrides, "dataset_dir": dataset_dir, "output_dir": out, "ckpt_path": checkpoint},
        timeout=300,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert metrics["n_volumes"] == n_volumes
    for name in ("roc_image.png", "score_histogram.png", "overlays.png"):
        assert (out / name).stat().st_size > 0
    return metrics


def check_training_fails_on_bad_dataset_dir(
    bundle: str, overrides: Mapping[str, Any], tmp_path: Path, layout: str
) -> None:
    """Training stops before its first epoch with a one-line layout error naming ``train/good``."""
    dataset = tmp_path / "data"
    dataset.mkdir()
    if layout == "no-train-good":
        (dataset / "images").mkdir()
        (dataset / "images" / "a.png").write_bytes(b"")
    with pytest.raises(BundleRunError) as info:
        run_bundle(
            bundle,
            "train.json",
            "training",
            {**overrides, "dataset_dir": dataset, "max_epochs": 1, "ckpt_dir": tmp_path / "models"},
            timeout=300,
        )
    assert "train/good" in str(info.value)
    assert "Epoch" not in str(info.value)
    assert not (tmp_path / "models" / "model.pt").exists()


def train_and_evaluate(
    bundle: str,
    data: Path,
    overrides: Mapping[str, Any],
    train_overrides: Mapping[str, Any],
    evaluate_overrides: Mapping[str, Any],
    out: Path,
    timeouts: tuple[int, int],
) -> dict[str, Any]:
    """Train through ``train.json`` then evaluate through ``evaluate.json``; returns ``metrics.json``."""
    checkpoint = train(bundle, {**overrides, **train_overrides, "dataset_dir": data}, out, timeout=timeouts[0])
    run_bundle(
        bundle,
        "evaluate.json",
        "run",
        {**overrides, **evaluate_overrides, "dataset_dir": data, "output_dir": out / "eval", "ckpt_path": checkpoint},
        timeout=timeouts[1],
    )
    return json.loads((out / "eval" / "metrics.json").read_text())


def check_checkpoint_describes_its_network(
    bundle: str,
    trained_overrides: Mapping[str, Any],
    checkpoint: Path,
    volume: Path,
    conflict: tuple[str, Any],
    tmp_path: Path,
) -> None:
    """``model.pt`` alone rebuilds the network; a conflicting override is one line; an old checkpoint still loads.

    Args:
        bundle: bundle name.
        trained_overrides: the architecture overrides the checkpoint was trained with.
        checkpoint: a ``model.pt`` written by ``train.json``.
        volume: a NIfTI volume to run inference on.
        conflict: an architecture key and a value other than the trained one.
        tmp_path: scratch folder.
    """
    inputs = tmp_path / "in"
    _copy_with_brain_mask(volume, inputs)
    key, value = conflict
    with pytest.raises(BundleRunError) as info:
        run_bundle(
            bundle,
            "inference.json",
            "run",
            {key: value, "dataset_dir": inputs, "output_dir": tmp_path / "conflict", "ckpt_path": checkpoint},
            timeout=300,
        )
    message = str(info.value)
    assert f"{key}={json.dumps(value)} was given but the model was trained with {key}=" in message, message
    assert "size mismatch" not in message, message

    # A checkpoint written before descriptions existed: the state dict alone; the config's values apply, as before.
    old = tmp_path / "old" / "model.pt"
    old.parent.mkdir()
    torch.save({"model": read_state_dict(checkpoint)}, old)
    assert read_description(old) is None
    out = tmp_path / "old_out"
    run_bundle(
        bundle,
        "inference.json",
        "run",
        {**trained_overrides, "dataset_dir": inputs, "output_dir": out, "ckpt_path": old},
        timeout=300,
    )
    assert (out / volume.name.replace(".nii.gz", "_anomaly.nii.gz")).is_file()


PREEMPTION_CONFIG = Path(__file__).parent / "configs" / "preempt_at_epoch_2.json"
"""Merged after ``train.json``: stops the run when epoch 2 starts, after ``checkpoint_epoch=1.pt`` is written."""


def check_resume_matches_uninterrupted(bundle: str, overrides: Mapping[str, Any], data: Path, tmp_path: Path) -> None:
    """A run killed in epoch 2 and resumed with ``--resume True`` ends with the uninterrupted run's exact weights.

    Also: a corrupt resume file is a one-line error before the first epoch.
    """
    settings = {**overrides, "dataset_dir": data, "max_epochs": 3, "device": "cpu"}
    uninterrupted = train(bundle, settings, tmp_path / "uninterrupted")

    killed = tmp_path / "killed"
    with pytest.raises(BundleRunError, match="simulated pre-emption at epoch 2"):
        run_bundle(
            bundle,
            "train.json",
            "training",
            {**settings, "ckpt_dir": killed / "models", "output_dir": killed / "train"},
            timeout=600,
            extra_configs=[PREEMPTION_CONFIG],
        )
    assert (killed / "models" / "checkpoint_epoch=1.pt").is_file()
    assert not (killed / "models" / "model.pt").exists()
    resumed = train(bundle, {**settings, "resume": True}, killed)

    expected, got = read_state_dict(uninterrupted), read_state_dict(resumed)
    assert expected.keys() == got.keys()
    differing = [k for k, v in expected.items() if isinstance(v, torch.Tensor) and not torch.equal(v, got[k])]
    assert not differing, f"resumed weights differ from the uninterrupted run's: {differing[:5]}"
    assert expected["calibration._extra_state"] == got["calibration._extra_state"]

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(BundleRunError) as info:
        train(bundle, {**settings, "resume_from": corrupt}, tmp_path / "corrupt_run")
    message = str(info.value)
    assert f"{corrupt}: not a readable training checkpoint" in message, message
    assert "Epoch: 1/" not in message, message
