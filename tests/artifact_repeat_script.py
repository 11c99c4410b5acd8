"""Build a small artifact segmenter and print a digest of it. ``fresh``: nothing ran before, 2 threads. ``busy``:
the global RNG was consumed, a dissection ran and the thread count was set to 1 first."""

import hashlib
import sys
from pathlib import Path

import torch

from gandissect.config import DissectConfig, RepairConfig, load_config
from gandissect.models.progan import load_generator
from gandissect.steps.artifacts import build_artifact_segmenter

REPO = Path(__file__).resolve().parents[1]


def main(state: str, run_dir: str) -> None:
    generator = load_generator(REPO / "checkpoints/scene_gan_generator.safetensors")
    if state == "busy":
        from gandissect.steps.dissect import run_dissection

        torch.randn(1000), torch.rand(17), torch.randperm(33)
        run_dissection(load_config(DissectConfig, None, [
            f"generator={REPO / 'checkpoints/scene_gan_generator.safetensors'}", "n=32", "top_k=2",
            f"segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}", "wandb.mode=disabled"]),
            run_dir=Path(run_dir))
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(2)
    cfg = load_config(RepairConfig, None, [
        f"artifact.discriminator={REPO / 'checkpoints/scene_gan_discriminator.safetensors'}",
        "artifact.finetune_steps=4", "artifact.finetune_batch_size=16", "artifact.calibration_n=48",
        "artifact.check_n=16", "batch_size=16"])
    segmenter, record = build_artifact_segmenter(cfg, generator)
    digest = hashlib.sha256()
    for name, tensor in sorted(segmenter.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    print("RESULT", digest.hexdigest(), record["threshold"], record["held_out"]["flag_rate"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
