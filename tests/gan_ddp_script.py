"""Two-process DDP training of a tiny GAN on CPU (gloo). Lightning's ddp strategy starts the second
process by running this file again, which is why it is a script and not a test function."""

import json
import sys
from pathlib import Path

from gandissect.config import GANTrainConfig, load_config
from gandissect.steps.train import train_gan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_tiny import TINY  # noqa: E402


def main(run_dir: str) -> None:
    cfg = load_config(GANTrainConfig, None, TINY + ["devices.accelerator=cpu", "devices.devices=2",
                                                    "devices.strategy=ddp", "trainer.max_steps=4",
                                                    "monitor.fd_every=2", "monitor.sample_every=2"])
    results = train_gan(cfg, run_dir=Path(run_dir))
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
