r"""Compare pixel-threshold rules on normal data and lesioned twins, leaving one subject out.

A pixel threshold calibrated on a few normal subjects has to hold on new patients. This tool measures how well a rule
does that without touching test data: on a validation set of held-out normal volumes and lesioned twins of the same
volumes (``python -m tools.anatomy_lesions``), each subject in turn is left out, the threshold is computed by the rule
from the normal scans of the other subjects, and it is applied to the left-out subject's normal scan and lesioned
twin. The pooled Dice at those thresholds is reported next to the best Dice over all thresholds (which uses the
ground truth), with the share of normal slices whose mask is not empty. The image threshold (the ``1 - image_fpr``
quantile of normal slice scores) is checked the same way (specificity and recall on the left-out subjects).

Rules (:func:`common.scoring.pixel_threshold`):

- ``pixel_quantile=Q``: the ``Q`` quantile of every normal brain pixel's score (docs/design.md; default 0.999).
- ``slice_max=F``: the ``1 - F`` quantile of the normal slices' largest brain-pixel scores, so that a fraction ``F``
  of normal slices have a non-empty mask.

Example (the models' held-out calibration volumes, lesions with another seed than the test set's)::

    python -m tools.anatomy_lesions runs/ixi_bet runs/ixi_val --names IXI049-HH-1358_T1.nii.gz ... --seed 1
    python -m monai.bundle run --config_file bundles/ms_nf/configs/inference.json --dataset_dir runs/ixi_val/test/good \
        --output_dir runs/val_ms_nf/good --ckpt_path runs/cmp_bet/runs/ms_nf/seed0/models/model.pt ...
    (the same for test/lesion into runs/val_ms_nf/lesion)
    python -m tools.lab.threshold_rules runs/ixi_val --maps runs/val_ms_nf/good runs/val_ms_nf/lesion \
        --rule pixel_quantile=0.999 --rule slice_max=0.05

The normal and lesioned scans of one subject share a file name (``test/good/<name>``, ``test/lesion/<name>``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.data import file_stem
from common.metrics import dice_scores
from common.scoring import PIXEL_RULES, pixel_threshold
from tools.arguments import OneLineArgumentParser, UsageError
from tools.compare.predictions import SlicePredictions, load_predictions

__all__ = ["Slices", "load_slices", "main", "parse_rule", "threshold_rules"]


@dataclass
class Slices:
    """Scored slices of a validation set: subject, label, score, map, ground truth and brain mask per slice."""

    subjects: list[str]
    normal_scan: list[bool]
    labels: np.ndarray
    scores: np.ndarray
    maps: list[np.ndarray]
    masks: list[np.ndarray]
    brains: list[np.ndarray]


def _brain_masks(maps_dir: Path, predictions: SlicePredictions) -> list[np.ndarray]:
    brains, cache = [], {}
    for (file, index), slice_map in zip(predictions.keys, predictions.maps, strict=True):
        path = maps_dir / f"{file_stem(Path(file))}_brain_mask.nii.gz"
        if file not in cache:
            cache.clear()  # one volume at a time
            cache[file] = np.asarray(nib.load(str(path)).dataobj) > 0 if path.is_file() else None
        volume = cache[file]
        brains.append(np.take(volume, index, axis=predictions.axis) if volume is not None else slice_map > 0)
    return brains


def load_slices(dataset_dir: str | Path, maps_dirs: list[str | Path]) -> Slices:
    """Read the inference outputs over a validation set's ``test/`` (see the module docstring).

    Raises:
        ValueError: when outputs are missing, a slice has no ground truth, or a subject lacks its normal scan.
    """
    out = Slices([], [], np.zeros(0, int), np.zeros(0), [], [], [])
    labels, scores = [], []
    for maps_dir in maps_dirs:
        predictions = load_predictions(maps_dir, dataset_dir)
        brains = _brain_masks(Path(maps_dir), predictions)
        for i, (file, _) in enumerate(predictions.keys):
            record = predictions.records[file]
            if predictions.masks[i] is None:
                msg = f"{file}: an abnormal scan without a ground-truth mask"
                raise ValueError(msg)
            out.subjects.append(Path(file).name)
            out.normal_scan.append(not record.label)
            labels.append(predictions.labels[i])
            scores.append(predictions.scores[i])
            out.maps.append(predictions.maps[i])
            out.masks.append(predictions.masks[i])
            out.brains.append(brains[i])
    out.labels, out.scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    lesioned = {s for s, normal in zip(out.subjects, out.normal_scan, strict=True) if not normal}
    normal = {s for s, n in zip(out.subjects, out.normal_scan, strict=True) if n}
    if lesioned - normal:
        msg = f"no normal scan for {sorted(lesioned - normal)}: twins must share a file name"
        raise ValueError(msg)
    if len(normal) < 2:
        msg = f"leaving one subject out needs at least 2 subjects with a normal scan, got {len(normal)}"
        raise ValueError(msg)
    return out


def parse_rule(text: str) -> tuple[str, float]:
    """``"slice_max=0.05"`` -> ``("slice_max", 0.05)``."""
    name, _, value = text.partition("=")
    if name not in PIXEL_RULES or not value:
        msg = f"rule {text!r}: expected NAME=VALUE with NAME one of {', '.join(PIXEL_RULES)}"
        raise ValueError(msg)
    try:
        return name, float(value)
    except ValueError:
        msg = f"rule {text!r}: {value!r} is not a number"
        raise ValueError(msg) from None


def threshold_rules(slices: Slices, rules: list[tuple[str, float]], image_fpr: float = 0.05) -> dict[str, Any]:
    """Leave-one-subject-out Dice, false-positive slices and image decisions of each rule (module docstring).

    Returns:
        ``{"subjects", "n_slices", "n_lesion_slices", "best_dice", "best_dice_threshold", "image", "rules": {rule:
        {"dice", "dice_over_best", "normal_slices_flagged", "thresholds"}}}``.
    """
    if not 0.0 < image_fpr < 1.0:
        msg = f"image_fpr must be in (0, 1), got {image_fpr}"
        raise ValueError(msg)
    subjects = sorted(set(slices.subjects))
    subject_of = np.asarray(slices.subjects)
    normal_scan = np.asarray(slices.normal_scan)
    best = dice_scores(slices.masks, slices.maps, foreground=slices.brains)
    result: dict[str, Any] = {
        "subjects": subjects,
        "n_slices": len(slices.maps),
        "n_lesion_slices": int(slices.labels.sum()),
        "best_dice": best["best_dice"],
        "best_dice_threshold": best["best_dice_threshold"],
        "rules": {},
    }
    brain_pixels = [m[b] for m, b in zip(slices.maps, slices.brains, strict=True)]
    slice_max = np.asarray([p.max() if p.size else -np.inf for p in brain_pixels])

    true_negative = false_positive = true_positive = false_negative = 0
    for subject in subjects:
        fit = (subject_of != subject) & normal_scan
        held = subject_of == subject
        threshold = float(np.quantile(slices.scores[fit], 1.0 - image_fpr))
        flagged = slices.scores[held] > threshold
        labels = slices.labels[held].astype(bool)
        true_negative += int((~flagged & ~labels).sum())
        false_positive += int((flagged & ~labels).sum())
        true_positive += int((flagged & labels).sum())
        false_negative += int((~flagged & labels).sum())
    result["image"] = {
        "image_fpr": image_fpr,
        "specificity": true_negative / max(true_negative + false_positive, 1),
        "recall": true_positive / max(true_positive + false_negative, 1),
    }

    for name, value in rules:
        key = f"{name}={value:g}"
        counts = np.zeros(3, dtype=np.int64)  # TP, FP, FN over brain pixels
        flagged_normal, n_normal, thresholds = 0, 0, {}
        for subject in subjects:
            fit = np.flatnonzero((subject_of != subject) & normal_scan)
            threshold = pixel_threshold([brain_pixels[i] for i in fit], name, value)
            thresholds[subject] = threshold
            for i in np.flatnonzero(subject_of == subject):
                predicted = brain_pixels[i] > threshold
                truth = slices.masks[i][slices.brains[i]]
                counts += [(predicted & truth).sum(), (predicted & ~truth).sum(), (~predicted & truth).sum()]
                if not slices.labels[i]:
                    n_normal += 1
                    flagged_normal += int(slice_max[i] > threshold)
        dice = 2 * counts[0] / max(2 * counts[0] + counts[1] + counts[2], 1)
        result["rules"][key] = {
            "dice": float(dice),
            "dice_over_best": float(dice / best["best_dice"]) if best["best_dice"] > 0 else float("nan"),
            "normal_slices_flagged": flagged_normal / max(n_normal, 1),
            "thresholds": thresholds,
        }
    return result


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{len(result['subjects'])} subjects left out in turn, {result['n_slices']} slices "
        f"({result['n_lesion_slices']} with lesion); best Dice {result['best_dice']:.3f} "
        f"at {result['best_dice_threshold']:.4g}; image threshold: specificity {result['image']['specificity']:.3f}, "
        f"recall {result['image']['recall']:.3f}",
        "",
        "| rule | Dice @thr | of best Dice | normal slices with a mask | thresholds |",
        "|---|---|---|---|---|",
    ]
    for key, row in result["rules"].items():
        thresholds = ", ".join(f"{t:.4g}" for t in row["thresholds"].values())
        lines.append(
            f"| {key} | {row['dice']:.3f} | {row['dice_over_best']:.2f} | {row['normal_slices_flagged']:.3f} "
            f"| {thresholds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line (module docstring)."""
    prog = "python -m tools.lab.threshold_rules"
    parser = OneLineArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path, help="validation set: test/good, test/lesion, ground_truth/lesion")
    parser.add_argument("--maps", nargs="+", required=True, help="inference output folders over its test/ scans")
    parser.add_argument(
        "--rule", action="append", default=None, help="NAME=VALUE, repeatable (default pixel_quantile=0.999)"
    )
    parser.add_argument("--image-fpr", type=float, default=0.05, help="image false-positive target (default 0.05)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    try:
        args = parser.parse_args(argv)
        rules = [parse_rule(r) for r in (args.rule or ["pixel_quantile=0.999"])]
        result = threshold_rules(load_slices(args.dataset_dir, args.maps), rules, args.image_fpr)
    except (UsageError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
