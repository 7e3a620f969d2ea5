"""Learning-rate schedules: lr_t for iteration t = 0, 1, ... of max_iter.

Each schedule is a callable ``schedule(lr, t, max_iter) -> lr_t``; trainers
accept an instance, any such callable, or one of the names in SCHEDULES.
"""
import math


class Constant:
    """lr_t = lr."""

    def __call__(self, lr, t, max_iter):
        return lr


class InverseScaling:
    """lr_t = lr / (t + 1)^power  (scikit-learn's 'invscaling', power_t = 0.25)."""

    def __init__(self, power=0.25):
        self.power = power

    def __call__(self, lr, t, max_iter):
        return lr / (t + 1) ** self.power


class Exponential:
    """lr_t = lr * gamma^t."""

    def __init__(self, gamma=0.99):
        self.gamma = gamma

    def __call__(self, lr, t, max_iter):
        return lr * self.gamma ** t


class Step:
    """lr_t = lr * gamma^floor(t / step_size)  (PyTorch's StepLR)."""

    def __init__(self, step_size=100, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma

    def __call__(self, lr, t, max_iter):
        return lr * self.gamma ** (t // self.step_size)


class Cosine:
    """lr_t = lr_min + (lr - lr_min) (1 + cos(pi t / max_iter)) / 2  (Loshchilov & Hutter 2017)."""

    def __init__(self, lr_min=0.0):
        self.lr_min = lr_min

    def __call__(self, lr, t, max_iter):
        return self.lr_min + 0.5 * (lr - self.lr_min) * (1 + math.cos(math.pi * t / max_iter))


SCHEDULES = {"constant": Constant, "invscaling": InverseScaling, "exponential": Exponential,
             "step": Step, "cosine": Cosine}


def get_schedule(schedule):
    """A schedule callable from a name in SCHEDULES or a callable."""
    if callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {sorted(SCHEDULES)} or a callable "
                         f"(lr, t, max_iter) -> lr_t, got {schedule!r}")
    return SCHEDULES[schedule]()
