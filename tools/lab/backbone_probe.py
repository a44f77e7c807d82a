r"""Probe the frozen features a flow would read, before training it: two training-free detectors on a dataset.

A normalizing flow can only be as good as the features it models, and finding that out by training MS-NF or DNFAD
takes hours. This tool fits two closed-form detectors on the standardised features of
:class:`common.backbones.FeatureExtractor` (``train/good`` only) and evaluates them on ``test/`` with the bundles'
pipeline (:class:`common.evaluation.AnomalyEvaluation`: same slicing, foreground, scoring and metrics), in minutes:

* ``norm``: the map :math:`\tfrac12\,\mathrm{mean}_c f_c^2` of each level. It is MS-NF's anomaly map at
  initialisation: its coupling blocks start as the identity and its channel permutations keep the squared norm, so
  this is the point every flow's training starts from.
* ``gaussian``: :math:`\tfrac{1}{2C}(f-\mu)^\top(\Sigma + \lambda I)^{-1}(f-\mu)` under one Gaussian per level with a
  full channel covariance shared by all positions. It is the negative log-likelihood of the best *affine* flow, the
  density a flow's likelihood training reaches when its couplings learn no more than an affine map.
* ``positional``: the same distance under one Gaussian *per position* (mean and full channel covariance of each
  feature-map position over the training images), PaDiM's model (Defard et al., ICPR 2020, Sec. 3.2) on these
  features. On aligned anatomy it also scores where a pattern occurs, which a position-free flow cannot; set against
  ``gaussian`` it tells how much of a peer's lead comes from position.

Each level's map is upsampled to the input size and the levels are averaged, as MS-NF fuses its scales.
When the trained flows score below ``norm`` on a validation split, their training moves away from the anomalies;
when ``gaussian`` scores below ``norm``, the features put the anomalies in their high-variance directions, which
any density model (a flow, PaDiM) discounts, and a better backbone (``backbone_weights``, e.g. from
``tools/configs/pretrain_backbone.json``) is the lever rather than a bigger flow.

Example (a development split, random initialisation against a self-supervised backbone)::

    python -m tools.lab.backbone_probe runs/dev_p6T --output-dir runs/probe --image-size 128 \
        --weights none runs/ssl/vicreg.pt

It writes ``<output-dir>/<weights>/<detector>/metrics.json`` and ``<output-dir>/probe.json`` (every row).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import RANDOM_INITS, FeatureExtractor, random_init_options
from common.checks import check_image_size
from common.data import discover_dataset, eval_transforms
from common.evaluation import AnomalyEvaluation, write_json_atomic
from common.scoring import MapScorer
from common.volumes import SliceSettings, load_slices
from tools.arguments import OneLineArgumentParser, UsageError
from tools.bundles import bundle_slice_settings

__all__ = ["DETECTORS", "FeatureProbe", "main", "probe_backbone"]

DETECTORS = ("norm", "gaussian", "positional")

#: keys of a bundle's ``metrics.json`` reported by the probe
REPORTED = ("image_auroc", "pixel_auroc", "pixel_auroc_foreground", "aupro", "aupro_foreground")


class FeatureProbe(nn.Module):
    r"""A training-free detector on frozen standardised features (see the module docstring).

    Args:
        extractor: the frozen feature extractor (its statistics fitted by :meth:`fit`).
        image_size: network input size ``(X, Y)``; inputs are resized to it and maps resized back.
        detector: ``"norm"``, ``"gaussian"`` or ``"positional"``.
        shrinkage: :math:`\lambda`, added to the covariance's diagonal (the features are standardised, so 1 is the
            average eigenvalue).

    Example:
        >>> probe = FeatureProbe(FeatureExtractor(out_indices=(1, 2)), (32, 32), "gaussian")
        >>> probe.fit([torch.rand(8, 1, 32, 32)])
        >>> probe(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self, extractor: FeatureExtractor, image_size: Sequence[int], detector: str = "norm", shrinkage: float = 0.01
    ) -> None:
        super().__init__()
        if detector not in DETECTORS:
            msg = f"detector must be one of {DETECTORS}, got {detector!r}"
            raise ValueError(msg)
        if shrinkage <= 0:
            msg = f"shrinkage must be > 0, got {shrinkage}"
            raise ValueError(msg)
        self.extractor = extractor
        self.image_size = check_image_size(image_size)
        self.detector = detector
        self.shrinkage = shrinkage

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.extractor(x)

    @torch.no_grad()
    def fit(self, images: Sequence[torch.Tensor]) -> None:
        """Fit the extractor's statistics (unless fitted) and the Gaussians of ``"gaussian"`` or ``"positional"``.

        Args:
            images: batches ``(B, C, X, Y)`` of normal training images at ``image_size``.
        """
        if not bool(self.extractor.fitted):
            self.extractor.fit_statistics(images)
        if self.detector == "norm":
            return
        # Running float64 sums over the batches rather than sklearn's EmpiricalCovariance, which needs every
        # position's vector in memory at once (hundreds of thousands of positions per level on a volume dataset).
        # Shared: one sum over every position; positional: one sum per position (its own mean and covariance).
        positional = self.detector == "positional"
        sums: list[torch.Tensor] = []
        products: list[torch.Tensor] = []
        counts: list[int] = []
        for batch in images:
            vectors = [f.permute(2, 3, 0, 1).flatten(0, 1).double() for f in self._features(batch)]  # (hw, B, C)
            if not positional:
                vectors = [v.reshape(1, -1, v.shape[-1]) for v in vectors]  # (1, hw B, C)
            if not sums:
                sums = [v.new_zeros(v.shape[0], v.shape[2]) for v in vectors]
                products = [v.new_zeros(v.shape[0], v.shape[2], v.shape[2]) for v in vectors]
                counts = [0] * len(vectors)
            for level, v in enumerate(vectors):
                sums[level] += v.sum(dim=1)
                products[level] += v.transpose(1, 2) @ v
                counts[level] += v.shape[1]
        for level, (total, product, count) in enumerate(zip(sums, products, counts, strict=True)):
            mean = total / count
            covariance = product / count - mean[:, :, None] * mean[:, None, :]
            covariance += self.shrinkage * torch.eye(mean.shape[1], dtype=torch.float64, device=mean.device)
            self.register_buffer(f"mean_{level}", mean.float())  # (P, C), P = 1 (shared) or h * w (positional)
            self.register_buffer(f"precision_{level}", torch.linalg.inv(covariance).float())  # (P, C, C)

    def level_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-level maps ``(B, 1, h_l, w_l)`` (see the module docstring)."""
        features = self._features(x)
        if self.detector == "norm":
            return [0.5 * f.float().pow(2).mean(dim=1, keepdim=True) for f in features]
        if not hasattr(self, "mean_0"):
            msg = f"the {self.detector} probe is not fitted: call fit() with training images first"
            raise RuntimeError(msg)
        maps = []
        for level, f in enumerate(features):
            batch, channels, height, width = f.shape
            centred = f.float().permute(2, 3, 0, 1).flatten(0, 1) - getattr(self, f"mean_{level}")[:, None]
            distance = ((centred @ getattr(self, f"precision_{level}")) * centred).sum(dim=-1) / (2 * channels)
            maps.append(distance.T.reshape(batch, 1, height, width))  # (hw, B) -> (B, 1, h, w)
        return maps

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``(B, 1, H, W)``: the levels' maps at the input size, averaged."""
        size = tuple(x.shape[-2:])
        maps = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in self.level_maps(x)]
        return torch.stack(maps, dim=0).mean(dim=0)


def training_images(
    dataset_dir: str | Path, settings: SliceSettings, image_size: Sequence[int], batch_size: int = 32
) -> list[torch.Tensor]:
    """The slices of ``<dataset_dir>/train/good`` at the network size, in batches ``(B, 1, X, Y)`` (no augmentation).

    Raises:
        ValueError: when the dataset has no training slice.
    """
    records = discover_dataset(dataset_dir).train_good
    resize = eval_transforms(image_size, keys=("image",))
    images = [resize({"image": item["image"]})["image"] for item in load_slices(records, settings)]
    if not images:
        msg = f"{dataset_dir}: no training slice to fit the probe on"
        raise ValueError(msg)
    return [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]


def probe_backbone(
    dataset_dir: str | Path,
    output_dir: str | Path,
    weights: Sequence[str | None] = (None,),
    detectors: Sequence[str] = DETECTORS,
    backbone: str = "resnet18",
    out_indices: Sequence[int] = (1, 2, 3),
    image_size: Sequence[int] = (256, 256),
    settings: SliceSettings | None = None,
    scorer: MapScorer | None = None,
    shrinkage: float = 0.01,
    device: str = "cpu",
    seed: int = 0,
    random_init: str = "recalibrated",
) -> list[dict[str, Any]]:
    """Fit and evaluate every detector on every backbone (see the module docstring).

    Args:
        dataset_dir: a dataset in the docs/design.md layout with ``test/`` and ``ground_truth/``.
        output_dir: receives ``<weights>/<detector>/metrics.json`` and ``probe.json``.
        weights: backbone weight files; ``None`` is random initialisation (seeded with ``seed``).
        detectors: among :data:`DETECTORS`.
        backbone: timm model name.
        out_indices: backbone stages (MS-NF: 1, 2, 3).
        image_size: network input size.
        settings: slicing and normalisation; default: the bundles' evaluation settings
            (:func:`tools.bundles.bundle_slice_settings`).
        scorer: maps to scores; default: the bundles' (top 1 % mean after smoothing with sigma 4).
        shrinkage: covariance shrinkage of ``"gaussian"`` and ``"positional"``.
        device: where to run.
        seed: seed of the random initialisation.
        random_init: how random weights are initialised: ``"recalibrated"`` (the flows' backbone: residual branches
            active, BatchNorm statistics re-estimated on the training images) or ``"timm"`` (timm's default:
            zero-initialised last BatchNorm of every residual block, untouched statistics; the random backbone of
            anomalib's PaDiM and of Skip-TS's teacher). Features are standardised either way.

    Returns:
        one row per (weights, detector): the weights, the detector and the metrics of :data:`REPORTED`.
    """
    random_init_options(random_init)  # a clear error before any work
    settings = settings or bundle_slice_settings()
    scorer = scorer or MapScorer("topk_mean", topk_fraction=0.01, smoothing_sigma=4.0)
    output_dir = Path(output_dir)
    images = training_images(dataset_dir, settings, image_size)
    rows = []
    for weight in weights:
        label = Path(weight).stem if weight is not None else ("random_timm" if random_init == "timm" else "random")
        torch.manual_seed(seed)
        extractor = FeatureExtractor(backbone, 1, out_indices, weight, **random_init_options(random_init, weight))
        extractor.fit_statistics(images)  # once per backbone: every detector reads the same standardised features
        for detector in detectors:
            probe = FeatureProbe(extractor, image_size, detector, shrinkage)
            probe.fit(images)
            evaluation = AnomalyEvaluation(
                probe, dataset_dir, output_dir / label / detector, settings, scorer, device=device, plots=False
            )
            metrics = evaluation.run()
            rows.append({"weights": label, "detector": detector, **{k: metrics.get(k) for k in REPORTED}})
    write_json_atomic(output_dir / "probe.json", rows)
    return rows


def _format(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| weights | detector | " + " | ".join(REPORTED) + " |", "|---" * (len(REPORTED) + 2) + "|"]
    for row in rows:
        values = ["–" if row[k] is None else f"{row[k]:.3f}" for k in REPORTED]
        lines.append(f"| {row['weights']} | {row['detector']} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = OneLineArgumentParser(prog="python -m tools.lab.backbone_probe", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--weights", nargs="+", default=["none"], help="weight files; 'none' = random init")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--out-indices", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--shrinkage", type=float, default=0.01)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--random-init",
        choices=RANDOM_INITS,
        default="recalibrated",
        help="random weights as the flows build them (default) or timm's default (anomalib's PaDiM, Skip-TS)",
    )
    try:
        args = parser.parse_args(argv)
        weights = [None if w.lower() == "none" else w for w in args.weights]
        for weight in weights:
            if weight is not None and not Path(weight).is_file():
                msg = f"{weight}: backbone weights file not found"
                raise ValueError(msg)
        rows = probe_backbone(
            args.dataset_dir,
            args.output_dir,
            weights,
            args.detectors,
            args.backbone,
            args.out_indices,
            (args.image_size, args.image_size),
            shrinkage=args.shrinkage,
            device=args.device,
            seed=args.seed,
            random_init=args.random_init,
        )
    except (UsageError, ValueError) as error:
        print(f"python -m tools.lab.backbone_probe: error: {error}", file=sys.stderr)
        return 2
    print(_format(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
