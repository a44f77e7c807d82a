"""The demo's pipeline at a reduced size: phantoms → training with console progress → inference → evaluation."""

from __future__ import annotations

import json

import pytest

from tools.demo import DEMO_NETWORK, DemoData, run_demo

# Fewer and smaller phantom volumes than the demo's (14 training volumes of 96 x 96 x 40), the demo's network.
REDUCED_DATA = DemoData(n_train=6, n_test_good=2, n_test_lesion=3, size=64, depth=24)
REDUCED_EPOCHS = 3
# Measured with this configuration, seed 0, on the 2-core CPU (tools/demo.py, "Choosing the demo"): see the floor's
# comment in the module docstring of tools.demo.
IMAGE_AUROC_FLOOR = 0.60


@pytest.mark.slow
def test_demo_pipeline_finds_phantom_lesions_and_shows_progress(tmp_path, capsys):
    metrics = run_demo(tmp_path / "demo", epochs=REDUCED_EPOCHS, seed=0, data_size=REDUCED_DATA, network=DEMO_NETWORK)
    console = capsys.readouterr().out
    print("reduced demo metrics:", json.dumps(metrics))
    for epoch in range(1, REDUCED_EPOCHS + 1):
        assert f"epoch {epoch}/{REDUCED_EPOCHS}:" in console, console
    assert "mean loss" in console
    out = tmp_path / "demo"
    assert (out / "eval" / "overlays.png").is_file()
    assert (out / "inference" / "scores.csv").is_file()
    assert len(list((out / "inference").glob("*_anomaly.nii.gz"))) == REDUCED_DATA.n_test_lesion
    assert metrics["image_auroc"] >= IMAGE_AUROC_FLOOR, metrics
