"""Learning rate and eps as pure functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

from robustcnn.train.config import Schedule


def learning_rate(schedule: Schedule, peak: float, step: int, total_steps: int) -> float:
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule is Schedule.COSINE:
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule is Schedule.ONECYCLE:
        rise = 0.4  # fraction of steps spent warming up
        return peak * (progress / rise if progress < rise else (1 - progress) / (1 - rise))
    return peak


def warm_eps(eps: float, step: int, warmup_steps: int) -> float:
    """Linear ramp from 0 to eps: MNIST adversarial training at full eps from step 0 often never starts."""
    if warmup_steps <= 0:
        return eps
    return eps * min(1.0, (step + 1) / warmup_steps)
