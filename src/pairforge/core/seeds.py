"""Named seed streams: every random draw that is derived from a user seed names its stream here.

A stream is a 32-bit hash of (seed, stream id, *extra) by numpy's SeedSequence, so two streams of
one seed never share noise. The offsets kept for old results (`shifted`) reproduce the numbers
that earlier versions drew with hand-written offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pairforge.errors import PairforgeError

# Fixed per-stage ids of the generation pipelines: two stages of one sample never share noise.
STAGE_IDS = {"joint": 0, "mask": 1, "image": 2, "sr": 3, "sr-augment": 4}

# Offsets of streams that were plain integer shifts before the streams had names; kept so that
# the same seed still gives the same numbers (downstream training order, ensemble members).
DOWNSTREAM_PICK_OFFSET = 10_000  # eval.downstream: which synthetic pairs a seed trains on
DOWNSTREAM_ORDER_OFFSET = 20_000  # eval.downstream: the sample order of one seed's epochs
ENSEMBLE_MEMBER_STRIDE = 1000  # seg.ensemble: member m of seed s uses s * stride + m


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A 63-bit seed for one micro-batch of one process: steps are reproducible on resume.

    It seeds the crop noise, timesteps and condition drops; `dropout_seed` the model's dropout.
    """
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, np.uint64)
    return int(state[0] >> 1)


def dropout_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The global torch seed (dropout) of one micro-batch of one process."""
    return step_seed(seed, step, micro, rank) + 1


def stage_seed(seed: int, stage: str) -> int:
    """Seed of one stage of one sample: a 32-bit hash of (seed, stage), independent across stages."""
    if stage not in STAGE_IDS:
        raise PairforgeError(f"stage {stage!r} is unknown; use one of {sorted(STAGE_IDS)}")
    state = np.random.SeedSequence([int(seed), STAGE_IDS[stage]]).generate_state(1)
    return int(state[0])


def downstream_pick_seed(seed: int) -> int:
    """Seed of the choice of synthetic pairs of one downstream seed."""
    return DOWNSTREAM_PICK_OFFSET + int(seed)


def downstream_order_seed(seed: int) -> int:
    """Seed of the training-sample order of one downstream seed."""
    return DOWNSTREAM_ORDER_OFFSET + int(seed)


def ensemble_member_seed(seed: int, member: int) -> int:
    """Seed of the initialization and shuffling of ensemble member `member`."""
    return int(seed) * ENSEMBLE_MEMBER_STRIDE + int(member)


def seeded_normal(seeds: Sequence[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """(len(seeds), *shape) standard normal noise, row i drawn on the CPU from seed i alone."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)
