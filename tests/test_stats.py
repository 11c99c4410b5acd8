"""Streaming statistics: quantile rank error, top-k, IoU counts against direct computations."""

import gandissect  # noqa: F401  (before torchmetrics: see gandissect._compat)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gandissect.errors import BadValueError
from gandissect.metrics.unit_stats import (UnitClassIoU, UnitQuantile, UnitTopK, _merge_topk, calibrated_edges,
                                           upsampled_masks)


def _unit_values(n: int) -> torch.Tensor:
    """(n, 6): n values of 6 units: normal, skewed, heavy-tailed, a point mass at 0, leaky ReLU, discrete."""
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(n, generator=g)
    exponential = -torch.log(torch.rand(n, generator=g))
    lognormal = torch.exp(2 * torch.randn(n, generator=g))
    relu = torch.relu(torch.randn(n, generator=g) - 1.5)          # 93% exact zeros
    leaky = F.leaky_relu(3 * torch.randn(n, generator=g) + 1, 0.2)
    discrete = torch.randint(0, 50, (n,), generator=g).float()
    return torch.stack([normal, exponential, lognormal, relu, leaky, discrete], dim=1)


def _rank_error(values: torch.Tensor, estimate: torch.Tensor, q: float) -> torch.Tensor:
    """Per unit: how far (as a share of n) the estimate's rank interval [#<v, #<=v] lies from q*n."""
    values = values.T
    n = values.shape[1]
    below = (values < estimate[:, None]).sum(dim=1).double() / n
    at_or_below = (values <= estimate[:, None]).sum(dim=1).double() / n
    return torch.clamp(torch.maximum(below - q, q - at_or_below), min=0)


@pytest.mark.parametrize("q", [0.99, 0.999])
def test_quantile_rank_error_on_a_million_values_per_unit(q):
    n = 1_200_000
    values = _unit_values(n)
    edges = calibrated_edges(values[:65536], bins=1024, focus=q)  # calibrated on the first values, as dissection
    metric = UnitQuantile(edges, q=q)
    for chunk in values.split(100_000):                            # streamed in pieces
        metric.update(chunk)
    assert int(metric.counts.sum(dim=1)[0]) == n
    estimate = metric.compute()
    errors = _rank_error(values, estimate, q)
    assert errors.max() <= 0.001, f"rank errors {errors.tolist()}"
    exact = torch.quantile(values[::4].T, q, dim=1)  # torch.quantile refuses 1.2M values; every 4th is close
    assert torch.allclose(estimate[:3], exact[:3], rtol=0.02)
    # other quantiles are still within the histogram's coarser resolution outside the focus band
    assert _rank_error(values, metric.quantile(0.5), 0.5).max() <= 0.005


def test_quantile_memory_does_not_grow_with_the_number_of_values():
    values = _unit_values(200_000)
    metric = UnitQuantile(calibrated_edges(values[:10_000], bins=256))
    sizes = []
    for chunk in values.split(50_000):
        metric.update(chunk)
        sizes.append(sum(getattr(metric, name).numel() for name in metric._defaults))
    assert len(set(sizes)) == 1 and sizes[0] == 6 * (metric.edges.shape[1] + 1) + 2 * 6


def test_quantile_of_activation_maps_is_over_all_samples_and_positions_of_each_unit():
    maps = torch.randn(64, 5, 8, 8) * torch.arange(1, 6).float()[None, :, None, None]
    metric = UnitQuantile(calibrated_edges(maps[:8]))  # units on dim 1; calibrated on 8 of the 64 maps
    metric.update(maps[:32])
    metric.update(maps[32:])
    per_unit = maps.transpose(0, 1).reshape(5, -1).T    # (values, units)
    assert _rank_error(per_unit, metric.quantile(0.99), 0.99).max() <= 0.002
    with pytest.raises(BadValueError, match="units on dim 1"):
        metric.update(torch.randn(10, 4))


def test_topk_keeps_the_best_samples_and_merges_like_one_process():
    scores = torch.randn(50, 4)
    metric = UnitTopK(4, k=5)
    for start in range(0, 50, 16):
        metric.update(scores[start:start + 16], torch.arange(start, min(start + 16, 50)))
    values, indices = metric.compute()
    expected = scores.T.topk(5, dim=1)
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(values, expected.values)
    # the distributed reduction of two halves gives the same as one process
    a, b = UnitTopK(4, 5), UnitTopK(4, 5)
    a.update(scores[::2], torch.arange(0, 50, 2))
    b.update(scores[1::2], torch.arange(1, 50, 2))
    merged = _merge_topk(torch.stack([a.best, b.best]))
    assert torch.equal(merged[..., 1].long(), expected.indices)


def test_iou_counts_equal_a_direct_numpy_computation_with_two_labels_per_pixel():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 4, 6, 6, generator=g) > 0.7
    labels = torch.randint(0, 5, (3, 2, 6, 6), generator=g)
    labels[:, 1][labels[:, 1] == 2] = 0           # second label often none, sometimes equal to the first
    labels[0, 1, 0, 0] = labels[0, 0, 0, 0]
    metric = UnitClassIoU(4, 5)
    metric.update(masks[:2], labels[:2])
    metric.update(masks[2:], labels[2:])
    m, lab = masks.numpy(), labels.numpy()
    expected = np.zeros((4, 5))
    for u in range(4):
        for c in range(5):
            has_c = (lab == c).any(axis=1)        # (N, H, W): any of the K labels is c
            inter = np.logical_and(m[:, u], has_c).sum()
            union = np.logical_or(m[:, u], has_c).sum()
            expected[u, c] = inter / union if union else 0.0
    assert np.allclose(metric.compute().numpy(), expected)
    assert int(metric.unit_area.sum()) == int(m.sum())


@pytest.mark.parametrize("shape", [(3, 6, 8, 8, 64), (2, 4, 4, 4, 64), (2, 5, 16, 16, 64), (2, 3, 5, 5, 17),
                                   (2, 4, 8, 8, 8)])
def test_upsampled_counts_equal_dense_upsampling_then_thresholding(shape):
    """Equal counts wherever no interpolated value lies within float32 rounding of its threshold (random
    thresholds here); such a pixel may fall on either side, see UnitClassIoU."""
    n, units, h, w, size = shape
    g = torch.Generator().manual_seed(sum(shape))
    activations = torch.randn(n, units, h, w, generator=g)
    thresholds = 1.0 + torch.rand(units, generator=g)
    labels = torch.randint(0, 7, (n, 2, size, size), generator=g)
    dense, sparse = UnitClassIoU(units, 7), UnitClassIoU(units, 7)
    dense.update(upsampled_masks(activations, thresholds, (size, size)), labels)
    sparse.update_upsampled(activations, thresholds, labels)
    assert int(dense.unit_area.sum()) > 0
    assert torch.equal(dense.intersection, sparse.intersection)
    assert torch.equal(dense.unit_area, sparse.unit_area)
    assert torch.equal(dense.class_area, sparse.class_area)
