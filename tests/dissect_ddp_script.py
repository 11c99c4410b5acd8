"""Dissect layer4 of the shipped GAN with 1 or 2 DDP processes on CPU (gloo). Lightning's ddp strategy starts
the second process by running this file again, which is why it is a script and not a test function."""

import sys
from pathlib import Path

from gandissect.config import DissectConfig, load_config
from gandissect.steps.dissect import run_dissection

REPO = Path(__file__).resolve().parents[1]


def main(run_dir: str, devices: int) -> None:
    common = [f"generator={REPO / 'checkpoints/scene_gan_generator.safetensors'}",
              f"segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}", "layers=[layer4]", "top_k=4",
              "wandb.mode=disabled", "devices.accelerator=cpu", f"devices.devices={devices}",
              f"devices.strategy={'ddp' if devices > 1 else 'auto'}"]
    # 13 batches: saved tallies are summed mid-pass (save_every=3), and one process gets a batch more
    run_dissection(load_config(DissectConfig, None, common + ["n=200", "batch_size=16", "save_every=3"]),
                   run_dir=Path(run_dir))
    # a single batch: with two processes, one of them has no batch at all
    run_dissection(load_config(DissectConfig, None, common + ["n=16", "batch_size=16"]),
                   run_dir=Path(f"{run_dir}-tiny"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
