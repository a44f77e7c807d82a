"""Foreground (head / brain) masks computed from the image itself.

Brain MRI is only scored fairly inside the head or brain: background air is trivially "normal" and inflates pixel
metrics. When a dataset ships foreground masks (``brain_mask/`` in the layout) they are used; otherwise
:func:`compute_foreground` derives one from the intensities.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import FillHoles, KeepLargestConnectedComponent
from skimage.filters import threshold_otsu

__all__ = ["compute_foreground"]


def compute_foreground(image: np.ndarray | torch.Tensor, largest_component: bool = True) -> np.ndarray:
    """Otsu threshold, hole filling and largest connected component.

    Works on a 2D slice or a 3D volume (3D connectivity); the image should already be normalised.

    Args:
        image: ``(X, Y)`` or ``(X, Y, Z)`` intensities.
        largest_component: keep only the largest connected component (drops noise specks and, on CT, the couch).

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
    # MONAI's transforms expect a channel axis; they fill holes and keep the largest component with full connectivity.
    mask_t = torch.from_numpy(mask[None].astype(np.uint8))
    if largest_component:
        mask_t = KeepLargestConnectedComponent(applied_labels=[1], connectivity=None)(mask_t)
    mask_t = FillHoles(applied_labels=[1])(mask_t)
    return np.asarray(mask_t[0]).astype(bool)
