"""Build the artifact segmenter of a repair (GAN Dissection, step 5): the GAN's discriminator D, fine-tuned for a
few hundred steps against the generator being repaired, gives a per-pixel fakeness map (by default occlusion: how
much D's realness rises when a window of the image is blurred; the other maps: ``models.artifact_segmenter``); a
threshold calibrated on real scenes flags ``flag_rate`` (1%) of their pixels. What it flags on generated images is
the class ``artifact``. Whether it flags generated images more than real ones at all is measured (``signal``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from gandissect.config import RepairConfig, to_dict
from gandissect.core.latents import generated_batches, seeded_latents
from gandissect.core.reproducible import fixed_threads
from gandissect.core.runs import model_identity
from gandissect.data import scenes
from gandissect.data.images import scene_batches
from gandissect.io import sha256_file, write_json
from gandissect.metrics.roc import roc_auc
from gandissect.models.artifact_segmenter import ArtifactSegmenter, flag_signal
from gandissect.models.generators import load_discriminator
from gandissect.models.losses import discriminator_loss


def finetune_discriminator(discriminator: nn.Module, generator: nn.Module, steps: int, batch_size: int,
                           lr: float, seed: int, r1_gamma: float = 1.0, r1_interval: int = 4,
                           variant: str = "default") -> nn.Module:
    """A copy of D trained ``steps`` more steps (the training loss: non-saturating, lazy R1) against the frozen
    generator, on real scenes of world ``seed`` (of ``variant``). A GAN's D at equilibrium is weak; this sharpens
    it on the generator being repaired."""
    D = copy.deepcopy(discriminator).train().requires_grad_(True)
    optimizer = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.99))
    real_scenes = scenes.SceneDataset(seed, steps * batch_size, generator.resolution, variant=variant)
    for step in tqdm(range(steps), desc="fine-tune discriminator", unit="step", leave=False):
        real = torch.stack([real_scenes[step * batch_size + i][0] for i in range(batch_size)])
        with torch.no_grad():
            fake = generator(seeded_latents(seed, batch_size, generator.latent_dim, step * batch_size)).clamp(-1, 1)
        regularize = r1_gamma > 0 and step % r1_interval == 0
        loss, _ = discriminator_loss(D, real, fake, r1_gamma if regularize else 0.0, r1_interval)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return D.eval().requires_grad_(False)


def build_artifact_segmenter(cfg: RepairConfig, generator: nn.Module) -> tuple[ArtifactSegmenter, dict]:
    """Fine-tune (optionally) and calibrate the artifact segmenter; returns it with a record of how.

    It runs single-threaded, so the segmenter is the same to the bit on any machine and whatever ran before in
    the process (see ``core.reproducible``); that costs about 1.6x the time of two threads."""
    with fixed_threads(1):
        return _build(cfg, generator)


def _build(cfg: RepairConfig, generator: nn.Module) -> tuple[ArtifactSegmenter, dict]:
    a = cfg.artifact
    start = time.perf_counter()
    D = load_discriminator(a.discriminator)
    if a.finetune_steps:
        D = finetune_discriminator(D, generator, a.finetune_steps, a.finetune_batch_size, a.finetune_lr,
                                   a.finetune_seed, variant=cfg.real_variant)
    segmenter = ArtifactSegmenter(D, a.method, a.d_layer, a.cell, a.stride, a.ig_steps)
    size = generator.resolution
    batches = math.ceil(a.calibration_n / cfg.batch_size)
    calibration = partial(scene_batches, a.calibration_seed, a.calibration_n, size, cfg.batch_size,
                          variant=cfg.real_variant)
    threshold = segmenter.calibrate(calibration(), a.flag_rate, total=batches)
    record = {"discriminator": a.discriminator, "discriminator_sha256": model_identity(a.discriminator),
              **segmenter.settings(),
              "finetune_steps": a.finetune_steps, "threshold": threshold, "target_flag_rate": a.flag_rate,
              "calibration": {"n": a.calibration_n, "seed": a.calibration_seed,
                              "flag_rate": segmenter.flag_rate(calibration())}}
    if a.check_n:
        record["signal"] = measure_signal(cfg, generator, segmenter)
        record["held_out"] = {"n": a.check_n, "seed": a.check_seed, "flag_rate": record["signal"]["real_share"]}
    record["build_s"] = round(time.perf_counter() - start, 1)
    return segmenter, record


def measure_signal(cfg: RepairConfig, generator: nn.Module, segmenter: ArtifactSegmenter) -> dict:
    """The flagged shares of ``check_n`` held-out real scenes and as many generated images (latents of
    ``check_seed``), compared: does the map tell this generator's images from real ones at all?"""
    a, size = cfg.artifact, generator.resolution
    real = list(scene_batches(a.check_seed, a.check_n, size, cfg.batch_size, variant=cfg.real_variant))
    generated = list(generated_batches(generator, a.check_seed, a.check_n, cfg.batch_size))
    with torch.no_grad():  # D's own verdict on the same images, for comparison with its map's
        fakeness = [torch.cat([-segmenter.discriminator(x) for x in batches]).cpu() for batches in (real, generated)]
    return {"n": a.check_n, "seed": a.check_seed, "d_auc": roc_auc(*fakeness),
            **flag_signal(segmenter.flagged_shares(real), segmenter.flagged_shares(generated))}


def _world(cfg: RepairConfig) -> dict:
    """The real scenes' world variant, in a reuse key (absent for the default world, so earlier keys still match)."""
    return {} if cfg.real_variant == "default" else {"real_variant": cfg.real_variant}


def artifact_segmenter(cfg: RepairConfig, generator: nn.Module, generator_id: str,
                       run_dir: Path) -> tuple[ArtifactSegmenter, dict]:
    """Build the artifact segmenter into ``run_dir``, or reuse the one an earlier run with the same settings saved
    there. Returns it and a record of how it was made (with the ``key`` that decides the reuse)."""
    if cfg.artifact.segmenter:  # a ready one (e.g. the shipped one for the shipped GAN): nothing to build
        given = ArtifactSegmenter.load(cfg.artifact.segmenter)
        given.save(run_dir / "artifact_segmenter.safetensors")  # the artifact dissection reads it from the run
        record = {"segmenter": cfg.artifact.segmenter, "segmenter_sha256": sha256_file(cfg.artifact.segmenter),
                  **given.settings(), "threshold": float(given.threshold), "build_s": 0.0}
        if cfg.artifact.check_n:
            record["signal"] = measure_signal(cfg, generator, given)
        record["key"] = {"segmenter_sha256": record["segmenter_sha256"], "generator": generator_id,
                         "plant": to_dict(cfg.plant), **_world(cfg)}
        return given, record
    path, record_path = run_dir / "artifact_segmenter.safetensors", run_dir / "artifact_segmenter.json"
    key = {"artifact": to_dict(cfg.artifact), "discriminator_sha256": model_identity(cfg.artifact.discriminator),
           "generator": generator_id, "plant": to_dict(cfg.plant), "batch_size": cfg.batch_size, **_world(cfg)}
    if path.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            return ArtifactSegmenter.load(path), record
    segmenter, record = build_artifact_segmenter(cfg, generator)
    segmenter.save(path)
    record["key"] = key
    write_json(record_path, record)
    return segmenter, record
