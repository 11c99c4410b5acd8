"""The painter's engine: a seed and a stack of strokes in, edited images out, with concurrent requests gathered into
one generator forward.

A stroke switches a concept's top units at one layer inside a mask: "remove" sets them to 0, "draw" to their 0.99
quantile. Strokes apply in order, each as ``r <- (1 - a) r + a k`` with ``a`` = the mask pooled to the layer's cells
(on the concept's units); a stack of them is again one edit ``(1 - alpha) r + alpha v`` (``compose``), so one batched
NetHook edit serves every request in a batch, each row with its own alpha and value.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from PIL import Image

from gandissect.core.hooks import NetHook, layer_shapes, module_device
from gandissect.core.latents import seeded_latents
from gandissect.errors import BadValueError

MAX_SEED = 2**31 - 1


@dataclass
class Stroke:
    """One intervention resolved against the concepts: ``mask`` is the painted area at the request's size."""

    concept: str
    layer: str
    action: str
    class_index: int
    units: list[int]
    values: list[float]
    mask: torch.Tensor  # (h, w) in [0, 1], any size


@dataclass
class Job:
    seeds: list[int]
    strokes: list[Stroke]
    done: threading.Event = field(default_factory=threading.Event)
    results: list[dict] | None = None
    error: BaseException | None = None


def pooled(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The share of each output cell that the mask covers (area pooling; nearest cells when enlarging)."""
    return F.adaptive_avg_pool2d(mask[None, None].float(), size)[0, 0]


def compose(strokes: list[Stroke], layer: str, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, value), each (U, h, w), equal to applying ``strokes`` on ``layer`` one after another.

    Stroke i maps r to (1 - a_i) r + a_i k_i; the composition is A r + B with A = prod(1 - a_i), so alpha = 1 - A and
    value = B / alpha, a weighted mean of the k_i (0 where alpha = 0, which leaves r untouched)."""
    units, h, w = shape
    keep, shift = torch.ones(units, h, w), torch.zeros(units, h, w)
    for stroke in strokes:
        if stroke.layer != layer:
            continue
        a = torch.zeros(units, h, w)
        a[stroke.units] = pooled(stroke.mask, (h, w))
        k = torch.zeros(units, 1, 1)
        k[stroke.units, 0, 0] = torch.tensor(stroke.values)
        keep, shift = (1 - a) * keep, (1 - a) * shift + a * k
    alpha = 1 - keep
    value = torch.where(alpha > 0, shift / alpha.clamp_min(1e-12), torch.zeros(()))
    return alpha, value


def png_url(pixels) -> str:
    """(H, W, 3) uint8 pixels as a PNG data URL."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


class PaintEngine:
    """Renders paint jobs. With ``batching`` a worker thread gathers the jobs waiting (up to ``max_batch`` images)
    into one forward of the generator and one of the segmenter; without it each job runs alone under one lock (the
    original GANPaint's way, kept for comparison).

    Plain samples are cached per seed (``cache_size``), so a seed without strokes gives the very same image every
    time, whatever batch it would have been computed in."""

    def __init__(self, generator, segmenter, latent_stream: int = 0, batching: bool = True, max_batch: int = 32,
                 wait_ms: float = 2.0, cache_size: int = 1024, layers: list[str] | None = None):
        self.generator, self.segmenter = generator.eval(), segmenter.eval()
        self.latent_stream, self.batching = latent_stream, batching
        self.max_batch, self.wait_s, self.cache_size = max_batch, wait_ms / 1000, cache_size
        self.shapes = layer_shapes(generator, list(layers or []))
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = None
        self.batches = 0  # forwards run, for the load benchmark
        if batching:
            self._worker = threading.Thread(target=self._loop, name="paint-engine", daemon=True)
            self._worker.start()

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    def render(self, seeds: list[int], strokes: list[Stroke]) -> list[dict]:
        """Per seed: ``image`` and ``original`` (H, W, 3) uint8, ``labels`` and ``original_labels`` (K, H, W)."""
        for seed in seeds:
            if not 0 <= seed <= MAX_SEED:
                raise BadValueError(f"seed {seed}: expected an integer from 0 to {MAX_SEED}")
        job = Job(list(seeds), list(strokes))
        if self.batching:
            self._queue.put(job)
            job.done.wait()
        else:
            with self._lock:
                self.run([job])
        if job.error is not None:
            raise job.error
        return job.results

    # --- the worker ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows = [job], self._rows(job)
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                jobs.append(more)
                rows += self._rows(more)
            self.run(jobs)

    @staticmethod
    def _rows(job: Job) -> int:
        return len(job.seeds) * (2 if job.strokes else 1)

    def run(self, jobs: list[Job]) -> None:
        """Render ``jobs`` together in this thread (one forward), setting each job's results or error."""
        try:
            self._render(jobs)
        except Exception as err:  # handed to each waiting request, which reports it
            for job in jobs:
                job.error = err
        finally:
            for job in jobs:
                job.done.set()

    @torch.no_grad()
    def _render(self, jobs: list[Job]) -> None:
        wanted = {s for job in jobs for s in job.seeds}
        originals = {s: self._cache[s] for s in wanted if s in self._cache}
        plain = sorted(wanted - set(originals))
        edited = [(job, s) for job in jobs if job.strokes for s in job.seeds]
        seeds = plain + [s for _, s in edited]
        if seeds:
            device = module_device(self.generator)
            z = torch.cat([seeded_latents(self.latent_stream, 1, self.generator.latent_dim, start=s) for s in seeds])
            layers = sorted({stroke.layer for job, _ in edited for stroke in job.strokes})
            with NetHook(self.generator, layers) as hook:
                for layer in layers:
                    units, h, w = self.shapes[layer]
                    alpha = torch.zeros(len(seeds), units, h, w)
                    value = torch.zeros(len(seeds), units, h, w)
                    for row, (job, _) in enumerate(edited, start=len(plain)):
                        alpha[row], value[row] = compose(job.strokes, layer, (units, h, w))
                    hook.edit(layer, alpha.to(device), None, value.to(device))
                images = hook(z.to(device)).clamp(-1, 1)
            labels = self.segmenter.labels(images).cpu()
            pixels = to_uint8(images)
            self.batches += 1
            for row, seed in enumerate(plain):
                originals[seed] = (pixels[row], labels[row])
        for seed, sample in originals.items():  # the most recently used last; the least recently used go first
            self._cache[seed] = sample
            self._cache.move_to_end(seed)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        done = {id(job): {} for job in jobs}
        for row, (job, seed) in enumerate(edited, start=len(plain)):
            done[id(job)][seed] = (pixels[row], labels[row])
        for job in jobs:
            job.results = []
            for seed in job.seeds:
                original, original_labels = originals[seed]
                image, image_labels = done[id(job)].get(seed, (original, original_labels))
                job.results.append({"seed": seed, "image": image, "labels": image_labels, "original": original,
                                    "original_labels": original_labels})
