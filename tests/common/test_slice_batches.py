"""Tests for common.slice_batches: full batches across files, equal to MONAI's per-volume SliceInferer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.slice_batches import CrossFileSliceBatcher, stack_slices, unstack_slices
from common.volumes import SliceWiseInferer
from tests.comparisons import MAP_ATOL, MAP_RTOL


class SliceNet(nn.Module):
    """A per-sample network that records its batch sizes: two channels, a local filter and a per-slice mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        if torch.isnan(x).any():
            msg = "NaN slice"
            raise ValueError(msg)
        return torch.tanh(self.conv(x)) + x.mean(dim=(1, 2, 3), keepdim=True)


class Item:
    def __init__(self, image: np.ndarray, axis: int) -> None:
        self.image, self.axis = image, axis


def _volumes(seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [
        Item(rng.random((12, 10, 7), dtype=np.float32), 2),
        Item(rng.random((12, 10, 5), dtype=np.float32), 2),
        Item(rng.random((12, 10, 1), dtype=np.float32), 2),  # a 2D image as a one-slice volume
        Item(rng.random((9, 12, 10), dtype=np.float32), 0),  # slices (12, 10): the same in-plane shape
        Item(rng.random((8, 6, 4), dtype=np.float32), 1),  # another in-plane shape
    ]


def _slice_inferer(network: nn.Module, item: Item) -> torch.Tensor:
    """The reference: MONAI's SliceInferer over one volume, ``(C, X, Y, Z)``."""
    with torch.inference_mode():
        volume = torch.from_numpy(item.image)[None, None]
        return SliceWiseInferer(spatial_dim=item.axis, sw_batch_size=3)(volume, network)[0]


@pytest.mark.parametrize("batch_size", [1, 4, 16, 64])
def test_outputs_equal_monai_slice_inferer_per_volume(batch_size):
    torch.manual_seed(0)
    network = SliceNet().eval()
    items = _volumes()
    batcher = CrossFileSliceBatcher(network, "cpu", batch_size=batch_size)
    results = list(batcher.run(enumerate(items)))
    assert [r.key for r in results] == list(range(len(items)))
    for result, item in zip(results, items, strict=True):
        assert result.error is None
        expected = _slice_inferer(network, item)
        assert result.outputs.shape == (2, *item.image.shape)
        torch.testing.assert_close(result.outputs, expected, rtol=MAP_RTOL, atol=MAP_ATOL)  # batch sizes differ


def test_batches_are_full_across_files_and_never_mix_in_plane_shapes():
    network = SliceNet().eval()
    items = _volumes()
    list(CrossFileSliceBatcher(network, "cpu", batch_size=4).run(enumerate(items)))
    # slices of shape (12, 10): 7 + 5 + 1 + 9 = 22 -> 4,4,4,4,4,2; then the (8, 4) slices of the last volume: 6 -> 4,2
    assert network.batch_sizes == [4, 4, 4, 4, 4, 2, 4, 2]


def test_dict_outputs_are_stitched_per_name():
    class TwoOutputs(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"anomaly": x * 2, "healthy": torch.cat([x, -x], dim=1)}

    items = _volumes()[:3]
    results = list(CrossFileSliceBatcher(TwoOutputs(), "cpu", batch_size=5).run(enumerate(items)))
    for result, item in zip(results, items, strict=True):
        image = torch.from_numpy(item.image)
        torch.testing.assert_close(result.outputs["anomaly"], 2 * image[None])
        torch.testing.assert_close(result.outputs["healthy"], torch.stack([image, -image]))


def test_a_failing_file_is_reported_alone_and_the_others_complete():
    network = SliceNet().eval()
    items = _volumes()
    items[1].image[:, :, 3] = np.nan  # the network raises on any batch holding this slice
    unreadable = ValueError("scan.nii.gz: cannot be read")
    stream = [(0, items[0]), (1, items[1]), ("bad", unreadable), (2, items[2]), (3, items[3])]
    results = list(CrossFileSliceBatcher(network, "cpu", batch_size=8).run(stream))
    assert [r.key for r in results] == [0, 1, "bad", 2, 3]
    assert isinstance(results[1].error, ValueError) and "NaN" in str(results[1].error)
    assert results[1].outputs is None
    assert results[2].error is unreadable and results[2].item is unreadable
    for result in (results[0], results[3], results[4]):
        assert result.error is None
        torch.testing.assert_close(result.outputs, _slice_inferer(network, result.item), rtol=1e-5, atol=1e-6)


def test_a_file_without_slices_fails_with_the_reason():
    results = list(CrossFileSliceBatcher(SliceNet().eval(), "cpu").run([("empty", Item(np.zeros((4, 4, 0)), 2))]))
    assert "no slices" in str(results[0].error)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stack_and_unstack_slices_round_trip(axis):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    slices = stack_slices(volume, axis)
    assert slices.shape == (volume.shape[axis], 1, *np.delete(volume.shape, axis))
    np.testing.assert_array_equal(slices[1, 0].numpy(), np.take(volume, 1, axis=axis))
    np.testing.assert_array_equal(unstack_slices(slices, axis)[0].numpy(), volume)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        CrossFileSliceBatcher(SliceNet(), "cpu", batch_size=0)
