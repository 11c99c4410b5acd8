import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from gandissect.errors import BadValueError, CheckpointError
from gandissect.metrics.fid import (FrechetDistance, build_fd, frechet_distance, load_statistics,
                                    random_inception_weights, save_statistics)
from pytorch_fid.fid_score import calculate_frechet_distance, compute_statistics_of_path

from .conftest import REPO, SHIPPED_SEGMENTER, run_cli
from .fid_ddp_worker import feed_shard, tiny_backbone


def _features(n, d, seed, shift=0.0):
    """Correlated float32 features, as a backbone would give them."""
    gen = np.random.default_rng(seed)
    mixing = gen.normal(size=(d, d)) / np.sqrt(d)
    return (gen.normal(size=(n, d)) @ mixing + shift).astype(np.float32)


def test_streamed_distance_equals_pytorch_fid_on_numpy_statistics():
    real, fake = _features(400, 64, seed=0), _features(300, 64, seed=1, shift=0.3)
    metric = FrechetDistance(None, 64)
    for side, feats in ((True, real), (False, fake)):
        for batch in np.array_split(feats, 7):  # uneven batches
            metric.update_features(torch.from_numpy(batch), real=side)
    # pytorch-fid's calculate_activation_statistics: float64 activations, np.mean and np.cov
    reference = [(np.mean(f.astype(np.float64), axis=0), np.cov(f.astype(np.float64), rowvar=False))
                 for f in (fake, real)]
    expected = calculate_frechet_distance(*reference[0], *reference[1])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(*reference[0], *reference[1]) == pytest.approx(expected, rel=1e-12)
    for side, (mu, sigma) in zip((False, True), reference):
        ours_mu, ours_sigma = metric.statistics(real=side)
        np.testing.assert_allclose(ours_mu, mu, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours_sigma, sigma, rtol=0, atol=1e-10)
    metric.set_real_statistics(*reference[1])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning", "ignore:invalid value:RuntimeWarning")
def test_singular_product_takes_pytorch_fids_offset_branch(capsys):
    mu = np.zeros(2)
    nilpotent = np.array([[0.0, 1.0], [0.0, 0.0]])  # the square root of sigma1 @ sigma2 is infinite
    with pytest.warns(RuntimeWarning, match="singular; adding 1e-06 to the diagonal"):
        ours = frechet_distance(mu, nilpotent, mu, np.eye(2))
    theirs = calculate_frechet_distance(mu, nilpotent, mu, np.eye(2))
    assert "adding 1e-06 to diagonal" in capsys.readouterr().out
    assert np.isfinite(ours) and ours == pytest.approx(theirs, rel=1e-12)


def test_imaginary_square_root_is_dropped_when_tiny_and_refused_when_not():
    mu = np.zeros(2)
    tiny = np.diag([1.0, -1e-8])  # sqrt has an imaginary part of 1e-4 on the diagonal: below pytorch-fid's 1e-3
    assert frechet_distance(mu, tiny, mu, np.eye(2)) == pytest.approx(
        calculate_frechet_distance(mu, tiny, mu, np.eye(2)), rel=1e-12)
    with pytest.raises(ValueError, match="Imaginary component"):
        calculate_frechet_distance(mu, -np.eye(2), mu, np.eye(2))
    with pytest.raises(BadValueError, match="imaginary component of 1"):
        frechet_distance(mu, -np.eye(2), mu, np.eye(2))


def test_fewer_images_than_features_warns_loudly():
    metric = FrechetDistance(None, 8)
    metric.update_features(torch.randn(5, 8), real=False)
    metric.update_features(torch.randn(20, 8), real=True)
    with pytest.warns(RuntimeWarning, match="only 5 fake images for 8 features; the covariance is singular"):
        metric.statistics(real=False)
    metric.set_real_statistics(np.zeros(8), np.eye(8), count=8)
    with pytest.warns(RuntimeWarning, match="only 8 real images for 8 features"):
        metric.statistics(real=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.set_real_statistics(np.zeros(8), np.eye(8), count=9)
        metric.statistics(real=True)


def test_inception_backbone_gives_pytorch_fids_features(tmp_path, monkeypatch):
    from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

    weights = random_inception_weights(seed=0)
    local = tmp_path / "my_inception.pth"
    torch.save(weights, local)
    # pytorch-fid finds its weights file in torch's hub cache and never downloads it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / FID_WEIGHTS_URL.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(weights, cached)
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    theirs = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    exact = build_fd("inception", weights=local, channels_last=False)
    assert exact.name == "FID" and exact.num_features == 2048
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = theirs((images + 1) / 2)[0].flatten(1)  # pytorch-fid is fed [0, 1] images
        assert expected.std() > 0.1
        torch.testing.assert_close(exact.backbone(images), expected, rtol=1e-6, atol=1e-6)
        fast = build_fd("inception", weights=local).backbone(images)  # channels-last: float32 rounding only
        torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    # Without a weights file, ours loads what pytorch-fid would download (here: its cache).
    default = build_fd("inception", channels_last=False).backbone.state_dict()
    assert all(torch.equal(default[k], v) for k, v in exact.backbone.state_dict().items())


def test_inception_weights_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="Inception weights not found"):
        build_fd("inception", weights=tmp_path / "none.pth")
    partial = random_inception_weights()
    del partial["Mixed_7c.branch_pool.conv.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="partial.pth does not hold pytorch-fid's FID Inception weights"):
        build_fd("inception", weights=tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="junk.pth is corrupt"):
        build_fd("inception", weights=tmp_path / "junk.pth")


def test_backbones_are_named_for_what_they_are():
    scenes = build_fd("scenes", segmenter_path=SHIPPED_SEGMENTER)
    assert scenes.name == "FD-scenes" and scenes.num_features == 128
    assert build_fd("tests.fid_ddp_worker:tiny_backbone").name == "FD-tiny_backbone"
    assert build_fd(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))).num_features == 4  # probed; (N,4,h,w) is pooled
    with pytest.raises(BadValueError, match="only the inception backbone"):
        build_fd(tiny_backbone(), name="FID")
    with pytest.raises(BadValueError, match="cannot be named 'FD-x'"):
        build_fd("inception", name="FD-x")
    with pytest.raises(BadValueError, match="cannot be imported"):
        build_fd("tests.no_such_module:factory")


def test_backbone_stays_frozen_in_eval_mode_and_calling_only_feeds():
    metric = build_fd("scenes", segmenter_path=SHIPPED_SEGMENTER)
    metric.train()  # what a LightningModule's .train() does to its submodules
    assert not metric.backbone.training and not any(p.requires_grad for p in metric.backbone.parameters())
    assert metric(torch.zeros(3, 3, 64, 64), real=True) is None
    assert int(metric.real_count) == 3


def test_two_processes_give_the_value_of_one(tmp_path):
    out = tmp_path / "ddp.json"
    ranks = [subprocess.Popen([sys.executable, str(REPO / "tests" / "fid_ddp_worker.py"), str(rank), "2",
                               str(tmp_path / "rendezvous"), str(out)], stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        for process in ranks:
            _, stderr = process.communicate(timeout=600)  # ~10 s on an idle 2-core machine
            assert process.returncode == 0, stderr[-3000:]
    finally:
        for process in ranks:
            process.kill()
    two = json.loads(out.read_text())
    one = build_fd(tiny_backbone())
    for rank in (0, 1):  # the same batches through the backbone, so only the summation differs
        feed_shard(one, rank, world=2)
    assert two["value"] == pytest.approx(float(one.compute()), rel=1e-9)
    mu, sigma = one.statistics(real=False)
    np.testing.assert_allclose(two["fake_mu"], mu, rtol=1e-12, atol=0)
    np.testing.assert_allclose(two["fake_sigma"], sigma, rtol=1e-9, atol=1e-15)
    assert two["local_fake_count"] == 21  # images 0, 2, ..., 40 of 41: local sums are back after syncing


def test_statistics_files_are_pytorch_fids_npz(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    path = save_statistics(tmp_path / "real.npz", mu, sigma, name="FD-scenes", count=500)
    assert [p.name for p in tmp_path.iterdir()] == ["real.npz"]  # written through a renamed temporary file
    theirs_mu, theirs_sigma = compute_statistics_of_path(str(path), None, 50, 3, "cpu")
    np.testing.assert_array_equal(theirs_mu, mu)
    np.testing.assert_array_equal(theirs_sigma, sigma)
    ours = load_statistics(path)
    assert ours["name"] == "FD-scenes" and ours["count"] == 500
    np.savez_compressed(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # as pytorch-fid --save-stats writes
    assert load_statistics(tmp_path / "pytorch_fid.npz")["name"] is None
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.npz is corrupt"):
        load_statistics(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(CheckpointError, match="has no mu and sigma arrays"):
        load_statistics(tmp_path / "other.npz")


def _gandissect(*args, runs):
    return run_cli(*args, env_runs=runs)


def test_fid_stats_and_score_commands(tmp_path):
    from gandissect.models.progan import ProGANGenerator

    stats = tmp_path / "real.npz"
    done = _gandissect("fid", "stats", "--data", "scenes", "--n", 150, "--seed", 3, "--out", stats, runs=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["metric"] == "FD-scenes" and printed["warnings"] == [] and "statistics:" in done.stderr
    saved = json.loads((tmp_path / "fid-stats" / "results.json").read_text())
    assert saved["n"] == 150 and "backbone: scenes" in (tmp_path / "fid-stats" / "config.yaml").read_text()
    assert compute_statistics_of_path(str(stats), None, 50, 128, "cpu")[1].shape == (128, 128)

    torch.manual_seed(0)
    checkpoint = ProGANGenerator(32, [8] * 8, latent_dim=8).save(tmp_path / "g.safetensors")
    done = _gandissect("fid", "score", "--checkpoint", checkpoint, "--stats", stats, "--n", 20, runs=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["metric"] == "FD-scenes" and printed["n"] == 20 and printed["seed"] == 0
    assert np.isfinite(printed["value"]) and printed["value"] > 0
    assert "gandissect: warning: FD-scenes: only 20 fake images for 128 features" in done.stderr
    assert printed["warnings"] and json.loads((tmp_path / "fid-score" / "results.json").read_text()) == {
        k: v for k, v in printed.items() if k != "run_dir"}

    save_statistics(tmp_path / "inception.npz", np.zeros(2048), np.eye(2048), name="FID")
    done = _gandissect("fid", "score", "--checkpoint", checkpoint, "--stats", tmp_path / "inception.npz",
                       "--n", 4, "--name", "refused", runs=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"gandissect: error: statistics file {tmp_path / 'inception.npz'} holds FID statistics; "
        "backbone 'scenes' gives FD-scenes"]
    assert not (tmp_path / "refused").exists()


def test_fid_stats_with_local_inception_weights(tmp_path):
    weights = tmp_path / "inception.pth"
    torch.save(random_inception_weights(), weights)
    done = _gandissect("fid", "stats", "--n", 2, "--backbone", "inception", "--weights", weights,
                       "--out", tmp_path / "real.npz", runs=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["metric"] == "FID" and printed["num_features"] == 2048
    assert "gandissect: warning: FID: only 2 real images for 2048 features" in done.stderr
    assert load_statistics(tmp_path / "real.npz")["mu"].shape == (2048,)
