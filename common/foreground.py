"""Foreground (head / brain) masks computed from the image itself.

Brain MRI is only scored fairly inside the head or brain: background air is trivially "normal" and inflates pixel
metrics. When a dataset ships foreground masks (``brain_mask/`` in the layout) they are used; otherwise
:func:`compute_foreground` derives one from the intensities.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import FillHoles
from scipy import ndimage
from skimage.filters import threshold_otsu

__all__ = ["MIN_COMPONENT_FRACTION", "compute_foreground", "keep_large_components"]

# Components of at least this fraction of the largest one are kept. In a low axial slice the temporal lobes and the
# cerebellum are separate from the rest of the brain; on the normal training slices of brats2015_slices keeping only
# the largest component kept 73% of the brain on average (16% on the worst slice), this rule 82% (the rest is dark
# tissue below the Otsu threshold), while specks and small couch fragments stay out.
MIN_COMPONENT_FRACTION = 0.1


def keep_large_components(mask: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION) -> np.ndarray:
    """Keep the connected components of ``mask`` with at least ``min_fraction`` of the largest one's size.

    Full connectivity (8 in 2D, 26 in 3D). MONAI's ``KeepLargestConnectedComponent`` keeps a fixed number of
    components and ``RemoveSmallObjects`` an absolute size; the rule here is relative to the largest component, so
    scipy's labelling is used directly.

    Args:
        mask: boolean ``(X, Y)`` or ``(X, Y, Z)`` mask.
        min_fraction: in ``[0, 1]``; 1 keeps only the largest component (and any tied with it), 0 keeps all.

    Returns:
        A boolean mask of the same shape.

    Raises:
        ValueError: when ``min_fraction`` is outside ``[0, 1]``.
    """
    if not 0.0 <= min_fraction <= 1.0:
        msg = f"min_fraction must be in [0, 1], got {min_fraction}"
        raise ValueError(msg)
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, kept)


def compute_foreground(
    image: np.ndarray | torch.Tensor, min_component_fraction: float = MIN_COMPONENT_FRACTION
) -> np.ndarray:
    """Otsu threshold, the large connected components, and hole filling.

    Works on a 2D slice or a 3D volume (3D connectivity); the image should already be normalised.

    Args:
        image: ``(X, Y)`` or ``(X, Y, Z)`` intensities.
        min_component_fraction: keep the largest connected component and those of at least this fraction of its
            size (drops noise specks and, on CT, the couch; keeps brain lobes that are separate in a 2D slice).
            1 keeps the largest component alone, 0 keeps every component.

    Returns:
        A boolean array of the image's shape. A constant image gives an all-True mask (nothing to separate).

    Example:
        >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1.0; img[14:18, 14:18] = 0.0
        >>> int(compute_foreground(img).sum())
        256
    """
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if float(array.max()) <= float(array.min()):
        return np.ones(array.shape, dtype=bool)
    mask = array > threshold_otsu(array)
    mask = keep_large_components(mask, min_component_fraction)
    # MONAI's FillHoles expects a channel axis.
    mask_t = FillHoles(applied_labels=[1])(torch.from_numpy(mask[None].astype(np.uint8)))
    return np.asarray(mask_t[0]).astype(bool)
