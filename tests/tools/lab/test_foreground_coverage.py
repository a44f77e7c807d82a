"""Tests for tools/lab/foreground_coverage.py: how much of the anomalies and reference masks a foreground covers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.lab.foreground_coverage import main

SIZE = 40


def _brain_and_lobe() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright 20x20 'brain', a separate 6x6 'lobe' (9% of it) holding the lesion, and the reference brain mask."""
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[4:24, 4:24] = 160
    image[30:36, 30:36] = 160
    lesion = np.zeros_like(image)
    lesion[31:34, 31:34] = 255
    reference = (image > 0).astype(np.uint8) * 255
    return image, lesion, reference


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """train/good with two normal images, one of them corrupt; test/tumor with one lesion image and its masks."""
    root = tmp_path / "data"
    image, lesion, reference = _brain_and_lobe()
    _write(root / "train" / "good" / "n0.png", image)
    (root / "train" / "good" / "broken.png").write_bytes(b"not a png")
    _write(root / "test" / "tumor" / "t0.png", image)
    _write(root / "ground_truth" / "tumor" / "t0.png", lesion)
    _write(root / "brain_mask" / "tumor" / "t0.png", reference)
    return root


def test_coverage_by_component_fraction(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out" / "coverage.json"
    assert main([str(dataset), "--min-component", "1", "0.05", "--output", str(output)]) == 0
    rows = {(row["split"], row["min_component"]): row for row in json.loads(output.read_text())}
    assert set(rows) == {("train/good", 1.0), ("test", 1.0), ("train/good", 0.05), ("test", 0.05)}
    brain, lobe = 20 * 20, 6 * 6
    # the largest component alone: the lobe and its whole lesion fall outside
    assert rows["test", 1.0]["anomaly_outside"] == 1.0
    assert rows["test", 1.0]["reference_covered"] == pytest.approx(brain / (brain + lobe))
    assert rows["test", 1.0]["foreground_fraction"] == pytest.approx(brain / SIZE**2)
    # components of at least 5% of the largest: the lobe is kept with its lesion
    assert rows["test", 0.05]["anomaly_outside"] == 0.0
    assert rows["test", 0.05]["reference_covered"] == 1.0
    assert rows["test", 0.05]["anomaly_pixels"] == 9
    # training files have no ground truth; the corrupt one is reported by name and left out
    train = rows["train/good", 0.05]
    assert train["files"] == 1 and train["anomaly_outside"] is None and train["reference_covered"] is None
    assert len(train["skipped"]) == 1 and "broken.png" in train["skipped"][0]
    captured = capsys.readouterr()
    assert "anomaly outside" in captured.out and "100.00%" in captured.out
    assert "broken.png" in captured.err


BAD_ARGUMENT_CASES = [
    # a component fraction outside [0, 1]
    (["--min-component", "1.5"], "foreground_min_component"),
    # not a number
    (["--min-component", "half"], "invalid float value"),
    # an unknown foreground mode
    (["--foreground", "file"], "invalid choice"),
]
BAD_ARGUMENT_IDS = ["fraction-above-1", "fraction-not-a-number", "foreground-mode"]


@pytest.mark.parametrize(("extra", "expected"), BAD_ARGUMENT_CASES, ids=BAD_ARGUMENT_IDS)
def test_bad_arguments_give_one_line(
    dataset: Path, capsys: pytest.CaptureFixture, extra: list[str], expected: str
) -> None:
    assert main([str(dataset), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


def test_missing_dataset_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent" in err and "train/good" in err
