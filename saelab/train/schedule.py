"""Learning rate as a function of training progress (fraction of LM tokens consumed).

Linear warm-up over the first `warmup` fraction, constant, then linear decay to zero over the
last `decay` fraction. Tying it to tokens rather than steps keeps resumed runs exact even though
sink masking makes the number of steps per chunk vary.
"""


def lr_factor(progress: float, warmup: float, decay: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if decay > 0 and progress > 1 - decay:
        return max((1 - progress) / decay, 0.0)
    return 1.0
