"""Bit-for-bit repeatable CPU work.

CPU kernels (convolution backward above all) split their reductions by the number of intra-op threads, so the
same computation at 1 and at 2 threads differs in the last bits - and a fine-tuned network drifts apart over
hundreds of steps. Random draws in gandissect come from their own seeded generators, never the global one; what
must also not depend on the machine's thread count runs inside ``fixed_threads``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def fixed_threads(count: int = 1) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, and restore the thread count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
