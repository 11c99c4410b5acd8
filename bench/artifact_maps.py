"""Which discriminator map finds a GAN's artifacts? Candidate maps side by side, by three measures.

Every map is calibrated to flag 1% of the pixels of real scenes (seed 101), then measured:

(a) planted: the shipped generator with units 5, 40, 77 of layer4 painting a checkerboard where they fire
    (``PlantedArtifacts``), D fine-tuned against it; IoU of the flagged pixels with the planted ones.
(b) signal: on the shipped generator, D fine-tuned against it (as a repair does); the share of generated pixels
    flagged, against the share of held-out real pixels (seed 102), and their ratio (the repair needs >= 3x).
(c) rules: agreement with the world's rule violations on the same generated images (through the shipped
    segmenter): the lift P(flagged | violating pixel) / P(flagged | other pixel).

First, how much of D's decision a global cue carries: the GAN draws everything smoother (less high-frequency
energy, the mean squared Laplacian), so D's ROC AUC is measured on the real scenes as they are and blurred until
their Laplacian energy matches the generated images'. The ``probe`` candidate is a logistic classifier of real
vs generated cells of D's features at one layer (trained here on other real scenes and latents).

    python bench/artifact_maps.py [--n 256] [--finetune-steps 200] [--out bench-artifact-maps.json]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import gandissect  # noqa: F401
from gandissect.core.hooks import NetHook
from gandissect.core.latents import seeded_latents
from gandissect.data.images import scene_batches
from gandissect.defaults import SCENE_GAN_DISCRIMINATOR, SCENE_GAN_GENERATOR, SCENE_SEGMENTER
from gandissect.metrics.roc import roc_auc as auc
from gandissect.metrics.world_rules import violations
from gandissect.models.artifact_segmenter import ArtifactSegmenter, gaussian_blur
from gandissect.models.planted import PlantedArtifacts
from gandissect.models.progan import load_discriminator, load_generator
from gandissect.models.segmenter import SceneSegmenter
from gandissect.steps.artifacts import finetune_discriminator

CANDIDATES = [("occlusion", {"cell": 16, "stride": 16}), ("occlusion", {"cell": 16, "stride": 8}),
              ("occlusion", {"cell": 8, "stride": 8}), ("gradcam", {"d_layer": "layer1"}),
              ("gradcam", {"d_layer": "layer3"}), ("gradcam", {"d_layer": "layer5"}),
              ("gradcam", {"d_layer": "layer7"}), ("saliency", {}), ("grad_x_input", {}),
              ("integrated_gradients", {}), ("probe", {"d_layer": "layer3"}), ("probe", {"d_layer": "layer5"})]
BATCH = 64


class ProbeSegmenter(ArtifactSegmenter):
    """A logistic probe on the cells of D's features at ``d_layer``: its fake logit per cell is the map."""

    def fit(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        cells = torch.cat([self._cells(real), self._cells(fake)])
        target = torch.cat([torch.zeros(len(cells) // 2), torch.ones(len(cells) - len(cells) // 2)])
        self.mean, self.std = cells.mean(0), cells.std(0) + 1e-6
        cells = (cells - self.mean) / self.std
        self.weight, self.bias = torch.zeros(cells.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=200)

        def closure():
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(cells @ self.weight + self.bias, target)
            (loss + 1e-3 * self.weight.pow(2).sum()).backward()
            return loss
        optimizer.step(closure)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), NetHook(self.discriminator, [self.d_layer]) as hook:
            hook(images)
            return hook.retained[self.d_layer]

    def _cells(self, images: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self._features(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
        return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])

    def fakeness(self, images: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        feats = self._features(images).permute(0, 2, 3, 1)
        logit = ((feats - self.mean) / self.std) @ self.weight.detach() + self.bias.detach()
        return F.interpolate(logit.unsqueeze(1), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]


def batched(fn, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def generate(generator, seed: int, n: int) -> torch.Tensor:
    with torch.no_grad():
        return batched(lambda z: generator(z).clamp(-1, 1), seeded_latents(seed, n, generator.latent_dim))


def laplacian_energy(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[0., 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return F.conv2d(images, kernel, groups=3).pow(2).mean(dim=(1, 2, 3))


def matched_blur(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The Gaussian sigma that brings the real images' mean Laplacian energy down to the generated ones'."""
    target, low, high = float(laplacian_energy(fake).mean()), 0.05, 4.0
    for _ in range(30):
        sigma = (low + high) / 2
        low, high = (sigma, high) if float(laplacian_energy(gaussian_blur(real, sigma)).mean()) > target else \
            (low, sigma)
    return sigma, gaussian_blur(real, sigma)


def segmenter_for(method: str, options: dict, D, probe_real, probe_fake) -> ArtifactSegmenter:
    if method == "probe":
        probe = ProbeSegmenter(D, "gradcam", options["d_layer"])
        probe.fit(probe_real, probe_fake)
        return probe
    return ArtifactSegmenter(D, method, **options)


def flags(segmenter: ArtifactSegmenter, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return batched(lambda x: segmenter.labels(x)[:, 0], images).bool()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images of each kind (real, generated, ...)")
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args()
    n, started = args.n, time.perf_counter()
    generator = load_generator(SCENE_GAN_GENERATOR).eval()
    planted_generator = PlantedArtifacts(generator, "layer4", [5, 40, 77])
    shipped_d = load_discriminator(SCENE_GAN_DISCRIMINATOR)
    real_cal, real_test, probe_real = (torch.cat(list(scene_batches(seed, n, 64, BATCH))) for seed in (101, 102, 104))
    fake, probe_fake = generate(generator, 2, n), generate(generator, 3, n)
    planted_images, probe_planted = generate(planted_generator, 2, n), generate(planted_generator, 3, n)
    planted_mask = planted_generator.planted_mask(seeded_latents(2, n, generator.latent_dim))
    tuned = finetune_discriminator(shipped_d, generator, args.finetune_steps, 32, 0.002, seed=103)
    tuned_planted = finetune_discriminator(shipped_d, planted_generator, args.finetune_steps, 32, 0.002, seed=103)

    with torch.no_grad():
        real_score, fake_score = -batched(tuned, real_test), -batched(tuned, fake)
        sigma, smoothed = matched_blur(real_test, fake)
        smoothed_score = -batched(tuned, smoothed)
    segmenter = SceneSegmenter.load(SCENE_SEGMENTER)
    with torch.no_grad():
        violating = torch.from_numpy(violations(batched(lambda x: segmenter.labels(x)[:, 0], fake))[0])
    results = {"n": n, "finetune_steps": args.finetune_steps, "d_auc": auc(real_score, fake_score),
               "laplacian_auc": auc(-laplacian_energy(real_test), -laplacian_energy(fake)),
               "laplacian_energy": {"real": float(laplacian_energy(real_test).mean()),
                                    "generated": float(laplacian_energy(fake).mean())},
               "matched_blur_sigma": sigma, "d_auc_smoothness_matched": auc(smoothed_score, fake_score),
               "violating_pixels": float(violating.float().mean()),
               "images_violating": float(violating.flatten(1).any(1).float().mean()),
               "planted_pixels": float(planted_mask.float().mean()), "maps": []}
    print(f"D (fine-tuned {args.finetune_steps} steps) ROC AUC real vs generated: {results['d_auc']:.3f}; "
          f"with the real scenes blurred (sigma {sigma:.2f}) to the generated images' Laplacian energy: "
          f"{results['d_auc_smoothness_matched']:.3f}; Laplacian energy alone: {results['laplacian_auc']:.3f}")
    print(f"rule-violating pixels: {results['violating_pixels']:.3%} (in {results['images_violating']:.0%} of "
          f"images); planted pixels: {results['planted_pixels']:.2%}")
    print(f"{'map':<30}{'planted IoU':>12}{'real flagged':>14}{'gen flagged':>13}{'ratio':>7}{'rules lift':>12}")
    for method, options in tqdm(CANDIDATES, desc="maps", unit="map"):
        name = " ".join([method] + [f"{k}={v}" for k, v in options.items()])
        row = {"map": name, "method": method, **options}
        for role, D, gen_images, probe_gen in (("shipped", tuned, fake, probe_fake),
                                               ("planted", tuned_planted, planted_images, probe_planted)):
            artifact = segmenter_for(method, options, D, probe_real, probe_gen)
            artifact.calibrate(real_cal.split(BATCH), 0.01)
            flagged = flags(artifact, gen_images)
            if role == "planted":
                row["planted_iou"] = float((flagged & planted_mask).sum() / (flagged | planted_mask).sum())
                continue
            row["real_flagged"] = float(flags(artifact, real_test).float().mean())
            row["generated_flagged"] = float(flagged.float().mean())
            row["ratio"] = row["generated_flagged"] / max(row["real_flagged"], 1e-12)
            row["rules_lift"] = float(flagged[violating].float().mean() / flagged[~violating].float().mean()
                                      .clamp_min(1e-12))
        results["maps"].append(row)
        tqdm.write(f"{name:<30}{row['planted_iou']:>12.3f}{row['real_flagged']:>14.3%}"
                   f"{row['generated_flagged']:>13.3%}{row['ratio']:>7.2f}{row['rules_lift']:>12.2f}")
    results["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"wall time {results['wall_s']:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
