"""`run_repair_pipeline` with 1 or 2 DDP processes on CPU (gloo). Lightning's ddp strategy starts the second process by
running this file again, which is why it is a script and not a test function. Writes <run_dir>/repair.json."""

import sys
from pathlib import Path

from gandissect.config import RepairConfig, load_config
from gandissect.pipelines import run_repair_pipeline

REPO = Path(__file__).resolve().parents[1]


def main(run_dir: str, devices: int) -> None:
    settings = [f"generator={REPO / 'checkpoints/scene_gan_generator.safetensors'}",
                f"segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}",
                f"artifact.discriminator={REPO / 'checkpoints/scene_gan_discriminator.safetensors'}",
                "plant.units=[5,40,77]", "k=3", "candidates=7", "dissect_n=96", "effect_n=32", "fd_n=112",
                "real_n=96", "batch_size=16", "artifact.calibration_n=64", "artifact.check_n=0",
                "artifact.require_signal=false",
                "artifact.finetune_steps=0", "random_draws=3",
                "artifact.cell=32", "artifact.stride=32",  # 5 discriminator passes per image, not 17: a shorter test
                "routes=[iou_effect]", "evaluation.resamples=30",
                "evaluation.kid_subsets=5",
                "evaluation.rules_n=32", "wandb.mode=disabled", "devices.accelerator=cpu",
                f"devices.devices={devices}", f"devices.strategy={'ddp' if devices > 1 else 'auto'}"]
    run_repair_pipeline(load_config(RepairConfig, None, settings), run_dir=Path(run_dir))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
