"""Overrides that shrink the shipped GAN config to a size the tests train in seconds."""

from pathlib import Path

SEGMENTER = Path(__file__).resolve().parents[1] / "checkpoints" / "scene_segmenter.safetensors"

TINY = [
    "model.resolution=32", "model.latent_dim=8", "model.g_widths=[16, 16, 16, 16, 8, 8, 8, 8]",
    "model.d_widths=[8, 8, 8, 8, 8, 8, 16, 16, 16]", "data.batch_size=4", "data.num_workers=0",
    "monitor.fd_n=8", "monitor.fd_real_n=16", "monitor.sample_n=4", "monitor.checkpoint_every=3",
    f"monitor.segmenter={SEGMENTER}", "trainer.log_every_n_steps=1", "devices.accelerator=cpu",
]
