"""One "node" of a two-node dissection: torchrun starts this file once per node (one process each) on the loopback
address, and Lightning picks up the rank and world size from torchrun's environment, as on a cluster."""

import sys
from pathlib import Path

from gandissect.config import DissectConfig, load_config
from gandissect.steps.dissect import run_dissection

REPO = Path(__file__).resolve().parents[1]


def main(run_dir: str, nodes: int) -> None:
    settings = [f"generator={REPO / 'checkpoints/scene_gan_generator.safetensors'}",
                f"segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}", "layers=[layer4]", "top_k=4",
                "n=96", "batch_size=16", "save_every=2", "wandb.mode=disabled", "devices.accelerator=cpu",
                "devices.devices=1", f"devices.num_nodes={nodes}", f"devices.strategy={'ddp' if nodes > 1 else 'auto'}"]
    run_dissection(load_config(DissectConfig, None, settings), run_dir=Path(run_dir))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
