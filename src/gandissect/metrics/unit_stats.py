"""Streaming per-unit statistics for dissection, as torchmetrics Metrics.

Dissecting 10,000 images of a 128-unit layer touches hundreds of millions of values, so nothing here
keeps the values themselves: every state has a size fixed by the number of units (and bins, k or
classes), and every state is summed (or merged) across processes by torchmetrics' distributed sync.

- ``UnitQuantile``: per-unit histogram over per-unit bin edges calibrated on a sample; its bins are
  dense around the quantile of interest, which makes the rank error there a few thousandths of a percent.
- ``UnitTopK``: per unit, the k samples with the largest score (e.g. the maximum of the unit's map).
- ``UnitClassIoU``: per (unit, class) intersection and union pixel counts of thresholded unit maps and
  segmentation labels (K >= 1 labels per pixel), for IoU summed over all images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from gandissect.errors import BadValueError


def _per_unit(values: Tensor, num_units: int | None = None) -> Tensor:
    """(N, U, ...) activations (units on dim 1) -> (U, N * ...) float32."""
    if values.dim() < 2 or (num_units is not None and values.shape[1] != num_units):
        raise BadValueError(f"expected values of shape (N, {num_units or 'U'}, ...) with units on dim 1, "
                            f"got {tuple(values.shape)}")
    return values.transpose(0, 1).reshape(values.shape[1], -1).float().contiguous()


def calibrated_edges(sample: Tensor, bins: int = 1024, focus: float = 0.99, width: float = 0.01) -> Tensor:
    """Per-unit bin edges (U, <= bins) at ranks of ``sample`` (N, U, ...): half spread over the whole range,
    half inside [focus - width, focus + width / 2], where the quantile will be read. Ranks that round to
    the same sample position are merged, so an edge repeats only where the sample repeats a value."""
    sample = _per_unit(sample).sort(dim=1).values
    ranks = torch.cat([torch.linspace(0, 1, bins // 2),
                       torch.linspace(max(focus - width, 0.0), min(focus + width / 2, 1.0), bins - bins // 2)])
    positions = torch.unique((ranks * (sample.shape[1] - 1)).round().long())
    return sample[:, positions].contiguous()


class UnitQuantile(Metric):
    """Quantiles of each unit's values from a per-unit histogram over fixed, calibrated bin edges.

    Bin j holds values in (edges[j-1], edges[j]]; the two open bins below the first and above the last
    edge are bounded by the smallest and largest value seen. A quantile is read by linear
    interpolation inside its bin, so its rank error is at most the share of values in that one bin;
    where an edge repeats (the calibration saw a point mass there, e.g. the zeros of a ReLU) the bin's
    upper edge itself is returned.
    Edges from ``calibrated_edges`` put up to 512 bins inside a 1.5%-wide band around the focus quantile:
    ~0.003% of the values per bin when the sample represents the data. Memory: U x (bins + 1) counts,
    whatever the number of values. Every process must use the same edges.
    """

    full_state_update = False

    def __init__(self, edges: Tensor, q: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.q = q  # the quantile compute() returns
        units, bins = edges.shape
        self.register_buffer("edges", edges.float().contiguous())
        self.add_state("counts", torch.zeros(units, bins + 1, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("low", torch.full((units,), float("inf")), dist_reduce_fx="min")
        self.add_state("high", torch.full((units,), float("-inf")), dist_reduce_fx="max")

    def update(self, values: Tensor) -> None:
        """``values``: (N, U, ...) activations, units on dim 1."""
        units, bins = self.edges.shape
        values = _per_unit(values, units)
        index = torch.searchsorted(self.edges, values)
        index += torch.arange(units, device=index.device)[:, None] * (bins + 1)
        self.counts += torch.bincount(index.flatten(), minlength=units * (bins + 1)).view(units, bins + 1)
        self.low = torch.minimum(self.low, values.min(dim=1).values)
        self.high = torch.maximum(self.high, values.max(dim=1).values)

    def quantile(self, q: float) -> Tensor:
        """(U,) the q-quantile of every unit."""
        counts = self.counts.double()
        total = counts.sum(dim=1, keepdim=True)
        target = q * total
        cumulative = counts.cumsum(dim=1)
        j = torch.searchsorted(cumulative, target).clamp(max=counts.shape[1] - 1)
        below = torch.where(j > 0, cumulative.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(target))
        fraction = ((target - below) / counts.gather(1, j).clamp(min=1)).clamp(0, 1)
        lower = torch.cat([self.low[:, None], self.edges], dim=1).double()
        upper = torch.cat([self.edges, self.high[:, None]], dim=1).double()
        lo, hi = lower.gather(1, j), upper.gather(1, j)
        lo, hi = torch.maximum(lo, self.low[:, None].double()), torch.minimum(hi, self.high[:, None].double())
        padded = F.pad(self.edges, (1, 1), value=float("nan"))  # NaN equals nothing
        k = j.clamp(max=self.edges.shape[1] - 1) + 1   # the bin's upper edge, in padded
        repeated = (padded.gather(1, k) == padded.gather(1, k - 1)) | (padded.gather(1, k) == padded.gather(1, k + 1))
        point_mass = repeated & (j < self.edges.shape[1])
        return torch.where(point_mass, hi, lo + fraction * (hi - lo)).squeeze(1).float()

    def compute(self) -> Tensor:
        return self.quantile(self.q)


def _merge_topk(stacked: Tensor) -> Tensor:
    """Reduce (processes, U, k, 2) gathered top-k states to one (U, k, 2)."""
    k = stacked.shape[2]
    return _best(stacked.permute(1, 0, 2, 3).flatten(1, 2), k)


def _best(candidates: Tensor, k: int) -> Tensor:
    """The k best (score, index) pairs per unit of (U, n, 2): highest score first, lower index on ties."""
    order = candidates[..., 1].argsort(dim=1, stable=True)
    candidates = candidates.gather(1, order[..., None].expand(-1, -1, 2))
    order = candidates[..., 0].argsort(dim=1, descending=True, stable=True)[:, :k]
    return candidates.gather(1, order[..., None].expand(-1, -1, 2))


class UnitTopK(Metric):
    """The k samples with the highest score per unit, as (score, sample index) pairs.

    Both live in one float64 state (indices are exact in float64 up to 2**53) so that the distributed
    merge keeps each score with its index.
    """

    full_state_update = False

    def __init__(self, num_units: int, k: int, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        empty = torch.stack([torch.full((num_units, k), float("-inf")), torch.full((num_units, k), -1.0)], dim=-1)
        self.add_state("best", empty.double(), dist_reduce_fx=_merge_topk)

    def update(self, scores: Tensor, indices: Tensor) -> None:
        """``scores``: (N, U) one score per sample and unit; ``indices``: (N,) the samples' global indices."""
        n, units = scores.shape
        new = torch.stack([scores.double().T, indices.double()[None, :].expand(units, n)], dim=-1)
        self.best = _best(torch.cat([self.best, new], dim=1), self.k)

    def compute(self) -> tuple[Tensor, Tensor]:
        """(U, k) scores and (U, k) sample indices, best first; -1 where fewer than k samples were seen."""
        return self.best[..., 0].float(), self.best[..., 1].long()


def _count_dtype(pixels: int) -> torch.dtype:
    """float32 sums of 0/1 values are exact below 2**24 terms (and faster than integer scatters); beyond, float64."""
    return torch.float32 if pixels < 2 ** 24 else torch.float64


def iou_from_counts(intersection: Tensor, unit_area: Tensor, class_area: Tensor) -> Tensor:
    """(U, C) float64 IoU = intersection / union from pixel counts (0 where the union is empty)."""
    inter = intersection.double()
    union = unit_area.double()[:, None] + class_area.double()[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def label_onehot(labels: Tensor, num_classes: int) -> Tensor:
    """(N, K, H, W) labels -> (N*H*W, C) float 0/1: 1 where any of the K labels of the pixel is c."""
    flat = labels.permute(0, 2, 3, 1).reshape(-1, labels.shape[1])
    return torch.zeros(flat.shape[0], num_classes, device=labels.device).scatter_(1, flat, 1.0)


def _axis_plan(n_in: int, n_out: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """How bilinear resizing (align_corners=False, as F.interpolate) fills one axis, grouped by source cell.

    Output positions whose two source cells are (g, min(g+1, n_in-1)) form group g. Returns, padded to the
    largest group: positions (n_in, L) (-1 = padding) and the weights of the two cells, each (n_in, L).
    """
    scale = n_in / n_out
    source = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=n_in - 1)
    w1 = torch.where(first < n_in - 1, source - first, torch.zeros_like(source))
    size = int(torch.bincount(first, minlength=n_in).max())
    positions = torch.full((n_in, size), -1, dtype=torch.long)
    w0s, w1s = torch.zeros(n_in, size), torch.zeros(n_in, size)
    for g in range(n_in):
        members = (first == g).nonzero().flatten()
        positions[g, :len(members)] = members
        w0s[g, :len(members)] = 1 - w1[members]
        w1s[g, :len(members)] = w1[members]
    return positions.to(device), w0s.to(device), w1s.to(device)


class UnitClassIoU(Metric):
    """Intersection and union pixel counts of every unit's mask with every class, summed over images.

    ``update`` takes masks at the labels' resolution: the counts are one matrix product,
    (U x pixels) masks times (pixels x C) label indicators. ``update_upsampled`` takes low-resolution
    unit maps and per-unit thresholds and gives the counts of ``update(upsampled > threshold)`` without
    upsampling every map: a pixel can only pass the threshold where one of the four cells it is
    interpolated from does, so only those cell neighbourhoods (a few percent at the 0.99 quantile) are
    interpolated, with F.interpolate's weights, and summed by ``index_add`` (the same product with a
    sparse unit indicator). Its interpolated values may differ from F.interpolate's in the last bit,
    so a pixel within one float32 rounding of its threshold can fall on the other side. Class 0
    ("no label") is counted like the others and ignored by callers.
    """

    full_state_update = False

    def __init__(self, num_units: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_units, self.num_classes = num_units, num_classes
        self.add_state("intersection", torch.zeros(num_units, num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("unit_area", torch.zeros(num_units, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("class_area", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self._plans: dict = {}

    def _add_class_area(self, labels: Tensor) -> None:
        """Pixels per class, a pixel counted once per distinct class among its K labels."""
        for k in range(labels.shape[1]):
            label = labels[:, k]
            new = torch.ones_like(label, dtype=torch.bool)
            for j in range(k):
                new &= label != labels[:, j]
            self.class_area += torch.bincount(label[new], minlength=self.num_classes)

    def update(self, masks: Tensor, labels: Tensor) -> None:
        """``masks``: (N, U, H, W) bool; ``labels``: (N, K, H, W) integer classes."""
        onehot = label_onehot(labels, self.num_classes)
        flat = masks.transpose(0, 1).reshape(self.num_units, -1)
        dtype = _count_dtype(flat.shape[1])
        self.intersection += (flat.to(dtype) @ onehot.to(dtype)).round().long()
        self.unit_area += masks.transpose(0, 1).reshape(self.num_units, -1).sum(dim=1)
        self._add_class_area(labels)

    def update_upsampled(self, activations: Tensor, thresholds: Tensor, labels: Tensor) -> None:
        """Counts of ``activations`` (N, U, h, w) bilinearly upsampled to the labels' (H, W) and > ``thresholds``."""
        n, units, h, w = activations.shape
        height, width = labels.shape[-2:]
        if (h, w) == (height, width):
            return self.update(activations > thresholds[None, :, None, None], labels)
        key = (h, w, height, width, activations.device)
        if key not in self._plans:
            self._plans[key] = (_axis_plan(h, height, activations.device), _axis_plan(w, width, activations.device))
        (rows, r0, r1), (cols, c0, c1) = self._plans[key]

        # the four source cells of every group of output pixels: (g, g+1) on each axis, the last repeated
        a = activations.float()
        down = torch.cat([a[:, :, 1:], a[:, :, -1:]], dim=2)
        corners = [a, torch.cat([a[..., 1:], a[..., -1:]], dim=3),
                   down, torch.cat([down[..., 1:], down[..., -1:]], dim=3)]
        limit = thresholds.float()[None, :, None, None]
        active = (torch.stack(corners).amax(dim=0) > limit).nonzero()
        sample, unit, gy, gx = active.unbind(1)
        v00, v01, v10, v11 = (c[sample, unit, gy, gx][:, None, None] for c in corners)
        wy0, wy1 = r0[gy][:, :, None], r1[gy][:, :, None]
        wx0, wx1 = c0[gx][:, None, :], c1[gx][:, None, :]
        values = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)  # the order F.interpolate uses
        y, x = rows[gy][:, :, None], cols[gx][:, None, :]
        inside = (values > thresholds.float()[unit][:, None, None]) & (y >= 0) & (x >= 0)
        patch, dy, dx = inside.nonzero().unbind(1)
        pixel_sample, pixel_unit = sample[patch], unit[patch]
        pixel_y, pixel_x = rows[gy[patch], dy], cols[gx[patch], dx]
        pixel_labels = labels[pixel_sample, :, pixel_y, pixel_x]  # (pixels, K)
        dtype = _count_dtype(n * height * width)
        present = torch.zeros(len(pixel_labels), self.num_classes, dtype=dtype, device=labels.device)
        present.scatter_(1, pixel_labels, 1.0)
        self.intersection += torch.zeros(units, self.num_classes, dtype=dtype, device=labels.device).index_add_(
            0, pixel_unit, present).round().long()
        self.unit_area += torch.bincount(pixel_unit, minlength=units)
        self._add_class_area(labels)

    def compute(self) -> Tensor:
        """(U, C) float64 IoU = intersection / union (0 where the union is empty)."""
        return iou_from_counts(self.intersection, self.unit_area, self.class_area)


def upsampled_masks(activations: Tensor, thresholds: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, U, H, W) bool: bilinear upsampling of the unit maps to ``size``, thresholded per unit."""
    up = F.interpolate(activations.float(), size=size, mode="bilinear", align_corners=False)
    return up > thresholds.float()[None, :, None, None]
