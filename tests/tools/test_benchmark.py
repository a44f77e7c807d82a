"""Tests for tools.benchmark end to end: run_benchmark and the command line (structure of the results, never speed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from common.checkpoint import DESCRIPTION_KEY, NetworkDescription
from tools.arguments import parse_overrides
from tools.benchmark import format_table, main, peak_fraction, run_benchmark
from tools.bundles import bundle_dir
from tools.components import build_components

BUNDLE = "ms_nf"
# A tiny MS-NF so the whole benchmark runs in seconds on the CPU.
TINY = {"n_blocks": 1, "hidden_channels": 8}
TINY_ARGS = ["--override", "n_blocks=1", "--override", "hidden_channels=8", "--image-size", "64"]
TINY_RUN = ["--volume-shape", "40", "40", "6", "--iterations", "1", "--warmup", "1", "--batch-size", "2"]
NO_EXTRACTION = ["--brain-extraction", "none"]  # no test runs deepbet
# A tiny AnomalyPro generator (plain convolutions, no backbone): inductor compiles it in seconds to a minute on the CPU.
TINY_COMPILE_ARGS = ["anomalypro", "--override", "channels=8", "--override", "n_down=1", "--override", "n_res=1"]
STAND_IN = "tests.tools.test_benchmark:bright_brain"
STAND_IN_CALLS: list[tuple[int, ...]] = []


def bright_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Stand-in brain extractor: the bright half of the intensity range."""
    STAND_IN_CALLS.append(volume.shape)
    return volume > 0.5 * float(volume.max())


OVERRIDE_CASES = [
    (["n_blocks=4"], {"n_blocks": 4}),  # JSON int
    (["image_size=[128, 128]", "attention=false"], {"image_size": [128, 128], "attention": False}),  # list, bool
    (["backbone=resnet18"], {"backbone": "resnet18"}),  # not JSON: kept as a string
    (["network_def#clamp=1.5", "clamp=3"], {"network_def#clamp": 1.5, "clamp": 3}),  # nested id
    (["fusion=max", "fusion=mean"], {"fusion": "mean"}),  # repeated key: the last one wins
    (["slice_range=null"], {"slice_range": None}),  # JSON null
]

BAD_ARGS_CASES = [
    (["no_such_bundle"], "unknown bundle"),  # lists the bundles
    ([BUNDLE, "--override", "n_blocks"], "key=value"),  # no '='
    ([BUNDLE, "--override", "=3"], "key=value"),  # empty key
    ([BUNDLE, "--override", "no_such_key=3"], "no such id"),  # typo in the config id
    ([BUNDLE, "--batch-size", "0"], "batch_size"),  # non-positive batch
    ([BUNDLE, "--iterations", "-1"], "iterations"),  # non-positive iterations
    ([BUNDLE, "--image-size", "0"], "image_size"),  # non-positive size
    ([BUNDLE, "--image-size", "64", "64", "64"], "image_size"),  # three sizes
    ([BUNDLE, "--volume-shape", "40", "0", "6"], "volume_shape"),  # non-positive volume axis
    ([BUNDLE, "--volume-shape", "40", "40"], "volume-shape"),  # argparse: wrong count
    ([BUNDLE, "--batch-size", "two"], "batch-size"),  # argparse: not an int
    ([BUNDLE, "--device", "nowhere"], "--device"),  # not a device
    ([BUNDLE, "--checkpoint", "/no/such/model.pt"], "model.pt"),  # missing checkpoint
    ([BUNDLE, "--override", 'n_blocks="many"'], "n_blocks"),  # the network rejects the value
    ([BUNDLE, "--brain-extraction", "bet"], "brain_extraction must be one of"),  # unknown extractor name
    ([BUNDLE, "--brain-extraction", "no_such_module_uad:fn"], "cannot be imported"),  # unimportable extractor
    ([BUNDLE, "--volume", "/no/such/volume.nii.gz"], "volume.nii.gz: --volume not found"),  # missing volume
    ([BUNDLE, "--volume", __file__], "3D NIfTI"),  # not a NIfTI file
    ([BUNDLE, "--precision", "fp16"], "--precision: invalid choice: 'fp16'"),  # argparse: not auto, fp32 or bf16
    ([BUNDLE, "--compile", "yes"], "unrecognized arguments: yes"),  # --compile takes no value
]


def _rows(table: str) -> dict[str, str]:
    """``{row name: value}`` of a :func:`format_table` report (name and value are two or more spaces apart)."""
    pairs = (line.split("  ", 1) for line in table.splitlines()[2:-1])
    return {name.strip(): value.strip() for name, value in pairs}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "sub" / "results.json"
    assert main([BUNDLE, *TINY_ARGS, *TINY_RUN, *NO_EXTRACTION, "--device", "cpu", "--output", str(out)]) == 0
    return json.loads(out.read_text()), out


@pytest.mark.parametrize(("items", "expected"), OVERRIDE_CASES, ids=[str(c[0]) for c in OVERRIDE_CASES])
def test_parse_overrides(items: list[str], expected: dict) -> None:
    assert parse_overrides(items) == expected


def test_run_benchmark_tiny() -> None:
    scripts_before = sys.modules.get("scripts")
    res = run_benchmark(
        BUNDLE,
        image_size=64,
        batch_size=2,
        iterations=2,
        warmup=1,
        volume_shape=(40, 40, 6),
        device="cpu",
        overrides=TINY,
        brain_extraction="none",
    )
    json.dumps(res, allow_nan=False)  # JSON-serialisable, no NaN
    assert sys.modules.get("scripts") is scripts_before  # the bundle's `scripts` package does not leak
    thr, e2e, model = res["throughput"], res["end_to_end"], res["model"]
    assert thr["slices_per_s"] > 0 and math.isfinite(thr["slices_per_s"])
    assert len(thr["batch_seconds"]) == 2 and all(math.isfinite(t) and t > 0 for t in thr["batch_seconds"])
    assert not thr["bf16_autocast"] and not thr["channels_last"]  # CUDA only
    for key in ("read_normalise_s", "maps_s", "write_s", "total_s", "slices_per_s"):
        assert math.isfinite(e2e[key]) and e2e[key] >= 0, key
    assert e2e["total_s"] == pytest.approx(e2e["read_normalise_s"] + e2e["maps_s"] + e2e["write_s"])
    assert e2e["n_slices"] == 6 and e2e["volume_shape"] == [40, 40, 6]
    assert model["flops_per_slice"] > 0 and sum(model["flops_by_operator"].values()) == model["flops_per_slice"]
    for section in ("model", "end_to_end"):
        assert res["memory"][section]["peak_mib"] > 0
    assert res["settings"]["image_size"] == [64, 64] and res["settings"]["overrides"] == TINY
    assert "random" in res["settings"]["weights"]
    assert res["environment"]["device"] == "cpu" and res["environment"]["torch"]
    extraction = res["brain_extraction"]
    assert extraction["method"] == "none" and not extraction["measured"] and extraction["s_per_volume"] is None
    assert "'none'" in extraction["reason"] and res["memory"]["brain_extraction"] is None
    assert e2e["brain_extraction_s_per_volume"] is None and not e2e["brain_extraction_in_total"]

    # Parameter counts are those of the network the bundle config builds.
    _, network, _, _ = build_components(BUNDLE, {**TINY, "image_size": [64, 64]})
    assert isinstance(network, nn.Module)
    assert model["parameters_total"] == sum(p.numel() for p in network.parameters())
    assert model["parameters_trainable"] == sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert 0 < model["parameters_trainable"] < model["parameters_total"]  # the backbone is frozen


def test_main_writes_json_and_table(results: tuple[dict, Path]) -> None:
    res, out = results
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    assert res["bundle"] == BUNDLE and res["settings"]["volume_shape"] == [40, 40, 6]
    assert res["throughput"]["slices_per_s"] > 0 and res["model"]["flops_per_slice"] > 0
    table = format_table(res)
    for label in ("throughput", "FLOPs / slice", "parameters", "end to end", "memory (model)", "versions"):
        assert label in table


def test_peak_section_is_consistent(results: tuple[dict, Path]) -> None:
    res, _ = results
    thr, peak, flops = res["throughput"], res["peak"], res["model"]["flops_per_slice"]
    # --precision auto on the CPU: fp32 eager in the default layout, as before the switches existed
    assert thr["precision_option"] == "auto" and thr["precision"] == "fp32" and not thr["bf16_autocast"]
    assert not thr["channels_last"] and not thr["compile"] and thr["compile_first_call_s"] is None
    assert peak["peak_source"].startswith("measured fp32 matmul rate: torch.mm 1024x1024")
    assert peak["flops_per_s"] == pytest.approx(flops * thr["slices_per_s"])
    assert math.isfinite(peak["peak_flops_per_s"]) and peak["peak_flops_per_s"] > 0
    assert peak["fraction_of_peak"] == pytest.approx(peak["flops_per_s"] / peak["peak_flops_per_s"])
    assert peak["floor_slices_per_s"] == pytest.approx(peak["peak_flops_per_s"] / flops)
    rows = _rows(format_table(res))
    assert rows["fraction of peak"] == f"{100 * peak['fraction_of_peak']:.2f} %"
    assert "measured fp32 matmul rate" in rows["peak FLOP/s"] and "FLOP/s" in rows["achieved FLOP/s"]
    assert rows["compute floor"].startswith(f"{peak['floor_slices_per_s']:,.1f} slices/s")
    assert "fp32 (--precision auto)" in rows["throughput"] and "compile" not in rows


def test_unknown_gpu_peak_in_the_table(results: tuple[dict, Path]) -> None:
    res = json.loads(json.dumps(results[0]))
    source = "unknown GPU NVIDIA A10G: no peak in the table"
    res["peak"] = peak_fraction(res["model"]["flops_per_slice"], res["throughput"]["slices_per_s"], None, source)
    json.dumps(res, allow_nan=False)
    rows = _rows(format_table(res))
    assert rows["peak FLOP/s"] == f"n/a: {source}" and rows["fraction of peak"] == "n/a"
    assert "compute floor" not in rows
    del res["peak"]  # results written before the peak section: no peak rows, no error
    assert "fraction of peak" not in format_table(res)


def test_bf16_channels_last_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bf16.json"
    argv = [BUNDLE, *TINY_ARGS, *TINY_RUN, *NO_EXTRACTION, "--device", "cpu", "--output", str(out)]
    assert main([*argv, "--precision", "bf16", "--channels-last"]) == 0
    res = json.loads(out.read_text())
    thr, peak = res["throughput"], res["peak"]
    assert thr["precision_option"] == "bf16" and thr["precision"] == "bf16" and thr["bf16_autocast"]
    assert thr["channels_last"] and not thr["compile"]
    assert peak["peak_source"].startswith("measured bf16 matmul rate")  # the peak in the timed precision
    assert peak["fraction_of_peak"] == pytest.approx(peak["flops_per_s"] / peak["peak_flops_per_s"])
    assert "bf16 autocast, channels_last)" in capsys.readouterr().out


def test_main_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([BUNDLE, *TINY_ARGS, *TINY_RUN, *NO_EXTRACTION, "--device", "cpu", "--image-size", "48", "64"]) == 0
    printed = capsys.readouterr().out
    assert "slices/s" in printed and "48x64" in printed


@pytest.mark.parametrize(("argv", "fragment"), BAD_ARGS_CASES, ids=[" ".join(c[0]) for c in BAD_ARGS_CASES])
def test_bad_arguments_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m tools.benchmark: error:") and fragment in err


def test_run_benchmark_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown bundle 'nope'; available: .*ms_nf"):
        run_benchmark("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["n_blocks"])
    with pytest.raises(ValueError, match="batch_size"):
        run_benchmark(BUNDLE, batch_size=0)
    with pytest.raises(ValueError, match="precision: expected one of auto, fp32, bf16, got 'fp16'"):
        run_benchmark(BUNDLE, precision="fp16")
    with pytest.raises(ValueError, match="channels_last: expected True, False or None"):
        run_benchmark(BUNDLE, channels_last="yes")


def _tiny_checkpoint(path: Path, described: bool) -> nn.Module:
    """A calibrated tiny MS-NF saved as training does (``described``) or as before descriptions existed."""
    _, network, _, _ = build_components(BUNDLE, {**TINY, "image_size": [64, 64]})
    network.calibration.set_thresholds(pixel_threshold=1.0, image_threshold=2.0)
    saved = {"model": network.state_dict()}
    if described:
        saved[DESCRIPTION_KEY] = NetworkDescription(network, bundle_dir(BUNDLE)).state_dict()
    torch.save(saved, path)
    return network


@pytest.mark.parametrize("described", [True, False], ids=["described", "old-format"])
def test_run_benchmark_with_checkpoint(described: bool, tmp_path: Path) -> None:
    """A checkpoint that describes its network needs no architecture overrides; an old one needs them."""
    checkpoint = tmp_path / "model.pt"
    network = _tiny_checkpoint(checkpoint, described)
    res = run_benchmark(
        BUNDLE,
        image_size=None if described else 64,
        batch_size=3,
        iterations=1,
        warmup=0,
        volume_shape=(40, 40, 8),
        device="cpu",
        overrides=None if described else TINY,
        checkpoint=checkpoint,
        brain_extraction="none",
    )
    assert res["settings"]["weights"] == f"checkpoint {checkpoint}"
    assert res["settings"]["overrides"] == ({} if described else TINY)
    assert res["settings"]["image_size"] == [64, 64]
    assert res["model"]["arguments"] == network.constructor_arguments
    assert res["model"]["parameters_total"] == sum(p.numel() for p in network.parameters())
    assert res["end_to_end"]["masks_written"]  # calibrated thresholds: the mask is written as in the bundle
    assert res["end_to_end"]["volume_source"] == "tools.phantoms.make_volume"


def test_override_contradicting_the_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "model.pt"
    _tiny_checkpoint(checkpoint, described=True)
    assert main([BUNDLE, "--checkpoint", str(checkpoint), "--override", "n_blocks=2", *TINY_RUN, *NO_EXTRACTION]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"python -m tools.benchmark: error: {checkpoint}: ")
    assert "n_blocks=2 was given but the model was trained with n_blocks=1" in err


def _head_file(path: Path) -> Path:
    """A 40 x 40 x 6 volume of 10 mm voxels with a bright ellipsoid: a plausible brain for :func:`bright_brain`."""
    grids = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in (40, 40, 6)), indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    volume = (100.0 * inside + 10.0 * np.random.default_rng(0).random((40, 40, 6))).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([10.0, 10.0, 10.0, 1.0])), str(path))
    return path


def test_brain_extraction_seconds_per_volume_with_a_stand_in(tmp_path: Path) -> None:
    volume = _head_file(tmp_path / "head.nii.gz")
    out = tmp_path / "results.json"
    expected_ml = float(np.count_nonzero(bright_brain(np.asarray(nib.load(str(volume)).dataobj), np.eye(4))))
    STAND_IN_CALLS.clear()
    argv = [BUNDLE, *TINY_ARGS, "--iterations", "1", "--warmup", "0", "--batch-size", "2", "--device", "cpu"]
    assert main([*argv, "--volume", str(volume), "--brain-extraction", STAND_IN, "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    extraction, e2e = res["brain_extraction"], res["end_to_end"]
    assert extraction["method"] == STAND_IN and extraction["measured"] and extraction["reason"] is None
    assert math.isfinite(extraction["s_per_volume"]) and extraction["s_per_volume"] > 0
    assert extraction["first_call_s"] > 0 and extraction["device"] == "cpu"
    assert extraction["brain_volume_ml"] == pytest.approx(expected_ml)  # 1 ml voxels
    assert extraction["included_in_end_to_end"] and e2e["brain_extraction_in_total"]
    assert e2e["brain_extraction_s_per_volume"] == extraction["s_per_volume"]
    assert e2e["brain_extraction"] == STAND_IN and e2e["foreground_source"] == "extraction"
    assert STAND_IN_CALLS == [(40, 40, 6)] * 3  # warm-up, timed, and inside the end-to-end read
    assert res["memory"]["brain_extraction"]["peak_mib"] > 0
    assert res["settings"]["volume"] == str(volume) and res["settings"]["brain_extraction"] == STAND_IN
    assert res["settings"]["volume_shape"] == [40, 40, 6] and e2e["volume_source"] == str(volume)
    table = format_table(res)
    row = next(line for line in table.splitlines() if line.startswith("brain extraction"))
    assert f"s / volume ({STAND_IN} on cpu" in row and "included in read + normalise" in row
    assert "memory (extraction)" in table


def test_brain_extraction_rejecting_the_synthetic_volume_is_reported_not_raised() -> None:
    # the synthetic 40 x 40 x 6 phantom of 1.2 x 1.2 x 2 mm voxels holds less than 30 ml: an implausible brain
    STAND_IN_CALLS.clear()
    res = run_benchmark(
        BUNDLE,
        image_size=64,
        batch_size=2,
        iterations=1,
        warmup=0,
        volume_shape=(40, 40, 6),
        device="cpu",
        overrides=TINY,
        brain_extraction=STAND_IN,
    )
    json.dumps(res, allow_nan=False)
    extraction, e2e = res["brain_extraction"], res["end_to_end"]
    assert not extraction["measured"] and extraction["s_per_volume"] is None
    assert extraction["reason"].endswith("the file is not scored") and "ml of brain" in extraction["reason"]
    assert not extraction["included_in_end_to_end"] and e2e["foreground_source"] == "computed"
    assert len(STAND_IN_CALLS) == 1  # the warm-up call only: the end-to-end volume runs without extraction
    assert e2e["total_s"] > 0 and res["memory"]["brain_extraction"] is None
    row = next(line for line in format_table(res).splitlines() if line.startswith("brain extraction"))
    assert f"not measured ({STAND_IN})" in row and "ml of brain" in row


@pytest.mark.slow  # inductor compiles C++: about 10 s with a warm cache, up to a minute cold on two CPU cores
def test_compile_times_the_first_call_apart(tmp_path: Path) -> None:
    out = tmp_path / "compiled.json"
    argv = [*TINY_COMPILE_ARGS, "--image-size", "32", *TINY_RUN, *NO_EXTRACTION, "--device", "cpu"]
    assert main([*argv, "--compile", "--precision", "fp32", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    thr = res["throughput"]
    assert thr["compile"] and thr["precision"] == "fp32" and not thr["channels_last"]
    assert thr["compile_first_call_s"] > 0 and math.isfinite(thr["slices_per_s"]) and thr["slices_per_s"] > 0
    assert len(thr["batch_seconds"]) == 1  # the compiling call is not among the timed iterations
    peak = res["peak"]
    assert peak["fraction_of_peak"] == pytest.approx(peak["flops_per_s"] / peak["peak_flops_per_s"])
    rows = _rows(format_table(res))
    assert rows["compile"].startswith(f"first call {thr['compile_first_call_s']:.2f} s (torch.compile")
    assert rows["throughput"].endswith("fp32, torch.compile)")


def _no_compiler(graph: torch.fx.GraphModule, example_inputs: list) -> None:
    msg = "no working C++ compiler found\n(details on a second line)"
    raise RuntimeError(msg)


def test_compile_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A backend that cannot compile (as inductor without a C++ compiler) ends the tool with one error line."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(model, backend=_no_compiler))
    argv = [*TINY_COMPILE_ARGS, "--image-size", "32", *TINY_RUN, *NO_EXTRACTION, "--device", "cpu", "--compile"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err == (
        "python -m tools.benchmark: error: --compile: torch.compile failed on cpu: "
        "RuntimeError: no working C++ compiler found"
    )
