"""KID, precision/recall, bootstrap intervals and the world's rules, each against a direct formula or a known case."""

import numpy as np
import pytest
import torch

import gandissect  # noqa: F401  (before torchmetrics: see gandissect._compat)
from gandissect.data import scenes
from gandissect.metrics.bootstrap import FrechetToReal, fd_interval, paired_difference_interval
from gandissect.metrics.fid import frechet_distance
from gandissect.metrics.kid import kernel_distance
from gandissect.metrics.precision_recall import knn_radii, precision_recall
from gandissect.metrics.world_rules import RULES, RuleViolations, violation_maps, violations

C = {name: i for i, name in enumerate(scenes.CLASSES)}


def test_kid_on_one_subset_of_everything_is_the_unbiased_polynomial_mmd():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=gen).double(), torch.randn(40, 6, generator=gen).double() + 0.3
    k = lambda a, b: (a @ b.T / 6 + 1) ** 3  # noqa: E731  (the polynomial kernel of Binkowski et al.)
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    direct = ((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
              - 2 * kxy.sum() / m ** 2)
    mean, std = kernel_distance(x, y, subsets=3, subset_size=40)  # every subset is the whole set, permuted
    assert mean == pytest.approx(float(direct), rel=1e-9) and std == pytest.approx(0, abs=1e-9)
    assert kernel_distance(x, x.clone(), subsets=3, subset_size=40)[0] == pytest.approx(
        float(2 * (kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) - 2 * kxx.sum() / m ** 2), rel=1e-9)
    # subsets are drawn from their own seeded generator: the global RNG neither matters nor moves
    torch.manual_seed(1)
    first = kernel_distance(x, y, subsets=5, subset_size=20, seed=4)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    assert kernel_distance(x, y, subsets=5, subset_size=20, seed=4) == first
    torch.set_rng_state(state)


def test_precision_and_recall_match_brute_force_balls():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(60, 4, generator=gen)
    fake = torch.cat([torch.randn(30, 4, generator=gen), torch.randn(30, 4, generator=gen) + 6])  # half far off
    d_rr, d_ff, d_fr = torch.cdist(real, real), torch.cdist(fake, fake), torch.cdist(fake, real)
    r_real = d_rr.sort(dim=1).values[:, 3]  # the 3rd neighbour after the sample itself
    r_fake = d_ff.sort(dim=1).values[:, 3]
    precision = (d_fr <= r_real[None]).any(dim=1).double().mean()
    recall = (d_fr.T <= r_fake[None]).any(dim=1).double().mean()
    result = precision_recall(real, fake, k=3)
    assert torch.allclose(knn_radii(real.double(), 3), r_real.double())
    assert result["precision"] == pytest.approx(float(precision)) and result["recall"] == pytest.approx(float(recall))
    assert 0.3 < result["precision"] <= 0.55  # the far half is never inside a real ball
    assert precision_recall(real, real)["precision"] == 1.0


def test_bootstrap_distance_equals_the_frechet_distance_and_intervals_cover_it():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 5))
    fake = rng.normal(size=(300, 5)) * 1.2 + 0.2
    mu, sigma = real.mean(0), np.cov(real, rowvar=False)
    distance = FrechetToReal(mu, sigma)
    exact = frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), mu, sigma)
    assert distance(fake) == pytest.approx(exact, rel=1e-9)
    low, high = fd_interval(distance, fake, resamples=100, seed=0)
    assert low < exact < high and high - low < exact
    assert fd_interval(distance, fake, resamples=100, seed=0) == (low, high)  # seeded: repeatable
    better = fake * 0.9 + 0.1 * real[:300]  # the same samples, moved towards the real ones
    low, high = paired_difference_interval(distance, better, fake, resamples=100, seed=0)
    assert high < 0  # pairing makes a clear improvement significant


def _street() -> np.ndarray:
    """A 16x16 label map obeying the rules: sky, a building with a roof, a door and a window, a tree, grass."""
    label = np.full((16, 16), C["sky"])
    label[8:] = C["grass"]
    label[4:12, 2:8] = C["building"]
    label[2:4, 2:8] = C["roof"]
    label[9:12, 4:6] = C["door"]
    label[5:7, 3:5] = C["window"]
    label[6:13, 11:13] = C["tree"]
    return label


def test_real_scenes_obey_the_rules_and_planted_violations_are_found():
    assert not any(m.any() for m in violation_maps(_street()).values())
    exact = np.stack([scenes.render_scene(0, i, 64)[1] for i in range(150)])
    union, broken = violations(exact)
    assert sum(b.sum() for b in broken.values()) == 0, {r: int(b.sum()) for r, b in broken.items()}

    planted = {}
    label = _street()
    label[1:3, 10:12] = C["window"]  # a window in the sky
    planted["part_off_building"] = label
    label = _street()
    label[0:2, 12:15] = C["dome"]  # a dome over the sky
    planted["crown_off_building"] = label
    label = _street()
    label[1:4, 9:11] = C["tree"]  # a tree floating in the sky
    planted["floating_object"] = label
    label = _street()
    label[0, 0:4] = C["grass"]  # grass above the sky
    planted["ground_over_sky"] = label
    for rule, label in planted.items():
        maps = violation_maps(label)
        assert maps[rule].any() and not any(maps[r].any() for r in RULES if r != rule), rule
        assert (maps[rule] & (label != _street())).sum() == (label != _street()).sum(), rule  # the planted pixels

    metric = RuleViolations()
    metric.update(torch.from_numpy(np.stack([_street(), planted["floating_object"], planted["part_off_building"]])))
    result = metric.compute()
    assert result["images"] == 3 and result["images_broken"] == pytest.approx(2 / 3)
    assert result["per_rule"]["floating_object"] == pytest.approx(1 / 3)
    objects = sum(np.isin(m, [C[c] for c in ("tree", "building", "roof", "dome", "door", "window")]).sum()
                  for m in (_street(), planted["floating_object"], planted["part_off_building"]))
    assert result["object_pixels_violating"] == pytest.approx((6 + 4) / objects)


def test_the_paired_kid_difference_is_the_difference_of_kids_on_shared_subsets():
    from gandissect.metrics.kid import kernel_distance_difference

    gen = torch.Generator().manual_seed(3)
    real = torch.randn(50, 6, generator=gen)
    base = torch.randn(50, 6, generator=gen) + 0.5
    closer = base * 0.5  # the same samples, moved towards the real ones
    full_real = kernel_distance(real, closer, subsets=1, subset_size=50)[0] - \
        kernel_distance(real, base, subsets=1, subset_size=50)[0]
    difference, (low, high) = kernel_distance_difference(real, closer, base, subsets=1, subset_size=50)
    assert difference == pytest.approx(full_real, rel=1e-9)  # one subset of everything: the plain difference
    difference, (low, high) = kernel_distance_difference(real, closer, base, subsets=40, subset_size=25)
    assert low <= difference <= high < 0
