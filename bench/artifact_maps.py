"""Which discriminator map finds artifacts best? Measured on planted artifacts, whose pixels are known.

The shipped generator with units 5, 40, 77 of layer4 painting a checkerboard where they fire
(``PlantedArtifacts``). Each candidate map is calibrated to flag 1% of the pixels of real scenes, then
compared with the planted blotches on generated images: precision (flagged pixels that are planted),
recall (planted pixels that are flagged) and IoU. Run for D as shipped and D fine-tuned against the
planted generator.

    python bench/artifact_maps.py [--n 256] [--finetune-steps 200]
"""

import argparse
import time

import torch

import gandissect  # noqa: F401
from gandissect.core.latents import seeded_latents
from gandissect.data.images import scene_batches
from gandissect.models.progan import load_discriminator, load_generator
from gandissect.models.artifact_segmenter import ArtifactSegmenter
from gandissect.models.planted import PlantedArtifacts
from gandissect.steps.artifacts import finetune_discriminator

CANDIDATES = [("saliency", None), ("gradcam", "layer1"), ("gradcam", "layer3"), ("gradcam", "layer5"),
              ("gradcam", "layer7")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="real scenes for calibration and generated images")
    parser.add_argument("--finetune-steps", type=int, default=200)
    args = parser.parse_args()

    generator = PlantedArtifacts(load_generator("checkpoints/scene_gan_generator.safetensors"), "layer4", [5, 40, 77])
    z = seeded_latents(11, args.n, generator.latent_dim)
    with torch.no_grad():
        images = torch.cat([generator(z[i:i + 64]).clamp(-1, 1) for i in range(0, args.n, 64)])
    planted = generator.planted_mask(z)
    print(f"planted pixels: {planted.float().mean():.2%} of {args.n} images")
    shipped = load_discriminator("checkpoints/scene_gan_discriminator.safetensors")
    start = time.perf_counter()
    tuned = finetune_discriminator(shipped, generator, args.finetune_steps, 32, 0.002, seed=103)
    print(f"fine-tuned D for {args.finetune_steps} steps in {time.perf_counter() - start:.0f} s")
    print(f"{'D':<12}{'map':<18}{'precision':>10}{'recall':>8}{'IoU':>7}{'real flagged':>14}")
    for d_name, D in (("shipped", shipped), (f"tuned {args.finetune_steps}", tuned)):
        for method, layer in CANDIDATES:
            segmenter = ArtifactSegmenter(D, method, layer or "layer3")
            segmenter.calibrate(scene_batches(101, args.n, 64, 64), 0.01)
            real_rate = segmenter.flag_rate(scene_batches(102, args.n, 64, 64))
            flagged = torch.cat([segmenter.labels(images[i:i + 64])[:, 0] for i in range(0, args.n, 64)]).bool()
            hits = (flagged & planted).sum().item()
            name = method + (f" {layer}" if layer else "")
            print(f"{d_name:<12}{name:<18}{hits / max(flagged.sum().item(), 1):>10.3f}"
                  f"{hits / planted.sum().item():>8.3f}{hits / (flagged | planted).sum().item():>7.3f}"
                  f"{real_rate:>14.3%}")


if __name__ == "__main__":
    main()
