"""`run_ace_pipeline` with 2 DDP processes on CPU (gloo): Lightning's ddp strategy starts the second process by
running this file again, which is why it is a script and not a test function. Writes <run_dir>/ace.json from
rank 0."""

import sys
from pathlib import Path

from gandissect.config import AceConfig, load_config
from gandissect.pipelines import run_ace_pipeline

REPO = Path(__file__).resolve().parents[1]


def main(run_dir: str) -> None:
    settings = [f"generator={REPO / 'checkpoints/scene_gan_generator.safetensors'}",
                f"segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}", "class_name=tree", "layer=layer4",
                f"dissection={run_dir}-dissection", "dissect_n=64", "constants_n=64", "n=8", "steps=4",
                "batch_size=4", "removal_units=2", "top_units=2", "wandb.mode=disabled",
                "devices.accelerator=cpu", "devices.devices=2", "devices.strategy=ddp"]
    run_ace_pipeline(load_config(AceConfig, None, settings), run_dir=Path(run_dir))


if __name__ == "__main__":
    main(sys.argv[1])
