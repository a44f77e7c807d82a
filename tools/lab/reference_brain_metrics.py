r"""Score several inference runs on the same slices and inside the same reference brain masks.

Runs made with different foregrounds are not comparable from their own ``metrics.json``: a run with
``brain_extraction: "none"`` scores the whole head and its own slice selection, a run with extraction the brain. This
tool reads each run's written outputs back (``scores.csv`` and ``<stem>_anomaly.nii.gz``, through
:func:`tools.compare.predictions.load_predictions`), keeps the slices that every run scored, and computes the metrics
of :func:`common.metrics.evaluate_anomaly_detection` with one foreground for all: reference brain masks, such as
``DATA/ixi_t1/brain_mask/good``. Thresholds are each model's calibrated ones, read from its ``model.pt``.

Example::

    python -m tools.lab.reference_brain_metrics runs/ixi_raw --brain-masks DATA/ixi_t1/brain_mask/good \\
        --run ms_nf:none=runs/cmp_none/runs/ms_nf/seed0 --run ms_nf:deepbet=runs/cmp_bet/runs/ms_nf/seed0=runs/ixi_bet

A run folder holds ``maps/`` (the inference outputs over the dataset's ``test/``) and ``models/model.pt``, as
``tools.compare`` writes them under ``runs/<bundle>/seed<k>/``. A run tested on a copy of the dataset (the same test
files, say with ``brain_mask/`` added) names that copy after a second ``=``; slices are matched by their path below
the dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.metrics import evaluate_anomaly_detection
from common.training import load_thresholds
from tools.arguments import OneLineArgumentParser, UsageError
from tools.compare.predictions import SlicePredictions, load_predictions

__all__ = ["COLUMNS", "main", "reference_brain_metrics"]

COLUMNS = {
    "image_auroc": "image AUROC",
    "image_recall": "recall @thr",
    "image_f1": "F1 @thr",
    "pixel_auroc_foreground": "pixel AUROC (brain)",
    "aupro_foreground": "AUPRO (brain)",
    "best_dice_foreground": "best Dice (brain)",
    "dice_foreground": "Dice @thr (brain)",
}


def _brain_slice(brain_masks: Path, file: str, index: int, cache: dict[str, np.ndarray]) -> np.ndarray:
    import nibabel as nib

    name = Path(file).name
    if name not in cache:
        path = brain_masks / name
        if not path.is_file():
            msg = f"{path}: no reference brain mask for {file}"
            raise ValueError(msg)
        cache.clear()  # one volume at a time
        cache[name] = np.asarray(nib.load(str(path)).dataobj) > 0
    return np.take(cache[name], index, axis=2)


def reference_brain_metrics(
    dataset_dir: str | Path,
    brain_masks: str | Path,
    runs: dict[str, str | Path | tuple[str | Path, str | Path]],
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """Metrics of each run over the slices all runs scored, with the reference brain masks as the foreground.

    Args:
        dataset_dir: the dataset the runs were tested on (``test/``, ``ground_truth/``).
        brain_masks: a folder of reference brain masks named like the test files (axial slicing, axis 2).
        runs: name -> run folder (``maps/`` and ``models/model.pt``), or ``(run folder, dataset copy)`` for a run
            tested on a copy of the dataset with the same test files.
        fpr_limit: AUPRO integration limit.

    Returns:
        ``{"n_slices": ..., "n_abnormal_slices": ..., "runs": {name: metrics}}``.

    Raises:
        ValueError: when a run's outputs, model or a reference mask is missing, or no slice is common to all runs.
    """
    brain_masks = Path(brain_masks)
    predictions: dict[str, SlicePredictions] = {}
    folders: dict[str, Path] = {}
    relative_keys: dict[str, list[tuple[str, int]]] = {}
    for name, spec in runs.items():
        folder, dataset = spec if isinstance(spec, tuple) else (spec, dataset_dir)
        folders[name] = Path(folder)
        predictions[name] = load_predictions(Path(folder) / "maps", dataset)
        root = Path(dataset).resolve()
        relative_keys[name] = [(str(Path(file).relative_to(root)), index) for file, index in predictions[name].keys]
    common_keys = set.intersection(*(set(keys) for keys in relative_keys.values()))
    if not common_keys:
        msg = f"the runs {sorted(runs)} have no scored slice in common"
        raise ValueError(msg)
    out: dict[str, Any] = {"runs": {}}
    cache: dict[str, np.ndarray] = {}
    for name, pred in predictions.items():
        keys = relative_keys[name]
        order = [i for i, key in enumerate(keys) if key in common_keys and pred.masks[i] is not None]
        order.sort(key=lambda i: keys[i])
        brains = [_brain_slice(brain_masks, pred.keys[i][0], pred.keys[i][1], cache) for i in order]
        pixel_threshold, image_threshold = load_thresholds(folders[name] / "models" / "model.pt")
        labels = np.asarray([pred.labels[i] for i in order])
        metrics = evaluate_anomaly_detection(
            labels,
            np.asarray([pred.scores[i] for i in order]),
            masks=[pred.masks[i] for i in order],
            maps=[pred.maps[i] for i in order],
            image_threshold=image_threshold,
            pixel_threshold=pixel_threshold,
            foreground=brains,
            fpr_limit=fpr_limit,
        )
        out["runs"][name] = metrics
        out["n_slices"], out["n_abnormal_slices"] = len(order), int(labels.sum())
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['n_slices']} slices scored by every run ({result['n_abnormal_slices']} abnormal); pixel metrics "
        "inside the reference brain masks; @thr = each model's calibrated thresholds.",
        "",
        "| run | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, metrics in result["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics.get(key, float('nan')):.3f}" for key in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a markdown table (and writes ``--output`` JSON)."""
    parser = OneLineArgumentParser(
        prog="python -m tools.lab.reference_brain_metrics", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dataset", type=Path, help="the dataset the runs were tested on")
    parser.add_argument("--brain-masks", type=Path, required=True, help="folder of reference brain masks")
    parser.add_argument(
        "--run", action="append", required=True, metavar="NAME=FOLDER[=DATASET]", help="a run (repeatable)"
    )
    parser.add_argument("--output", type=Path, help="also write the metrics as JSON here")
    try:
        args = parser.parse_args(argv)
        runs: dict[str, Any] = {}
        for item in args.run:
            parts = item.split("=")
            if len(parts) not in (2, 3) or not all(parts):
                msg = f"--run takes NAME=FOLDER or NAME=FOLDER=DATASET, got {item!r}"
                raise UsageError(msg)
            runs[parts[0]] = parts[1] if len(parts) == 2 else (parts[1], parts[2])
        result = reference_brain_metrics(args.dataset, args.brain_masks, runs)
    except (UsageError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_markdown(result))
    if args.output is not None:
        from common.evaluation import write_json_atomic

        write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
