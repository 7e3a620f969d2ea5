"""Learning-rate schedules: lr_t for iteration t = 0, 1, ... of max_iter.

Each schedule is a callable ``schedule(lr, t, max_iter) -> lr_t``; trainers
accept an instance, any such callable, or one of the names in SCHEDULES.  A
schedule that reacts to the loss (`ReduceOnPlateau`) sets ``uses_history = True``
and is called ``schedule(lr, t, max_iter, history)`` with the trainer's history
records so far (each has a "loss"): its lr_t is a function of that history, so a
resumed run (whose history comes back from the checkpoint) continues exactly.
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


class Linear:
    """lr_t = lr (1 - (1 - end) t / max_iter): linear decay to end * lr."""

    def __init__(self, end=0.0):
        self.end = end

    def __call__(self, lr, t, max_iter):
        return lr * (1.0 - (1.0 - self.end) * t / max_iter)


class ReduceOnPlateau:
    """lr_t = lr factor^r_t, r_t the plateaus seen in the losses of records 0..t-1
    (PyTorch's ReduceLROnPlateau, mode "min", relative threshold):

    the best loss improves when loss < best (1 - threshold); after `patience`
    records in a row without improvement the rate is cut (never below min_lr)
    and the count starts again.
    """

    uses_history = True

    def __init__(self, factor=0.5, patience=10, threshold=1e-4, min_lr=0.0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience!r}")
        self.factor, self.patience, self.threshold, self.min_lr = (
            factor, patience, threshold, min_lr)
        self._restart(None)

    def _restart(self, history):
        self._history, self._seen, self._best, self._bad, self._cuts = history, 0, math.inf, 0, 0

    def __call__(self, lr, t, max_iter, history=()):
        if history is not self._history or len(history) < self._seen:   # another run
            self._restart(history)
        for record in history[self._seen:]:
            loss = record["loss"]
            if loss < self._best * (1.0 - self.threshold) or self._best == math.inf:
                self._best, self._bad = loss, 0
            else:
                self._bad += 1
                if self._bad >= self.patience:
                    self._cuts, self._bad = self._cuts + 1, 0
        self._seen = len(history)
        return max(lr * self.factor ** self._cuts, self.min_lr)


SCHEDULES = {"constant": Constant, "invscaling": InverseScaling, "exponential": Exponential,
             "step": Step, "cosine": Cosine, "linear": Linear, "plateau": ReduceOnPlateau}


def get_schedule(schedule):
    """A schedule callable from a name in SCHEDULES or a callable."""
    if callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {sorted(SCHEDULES)} or a callable "
                         f"(lr, t, max_iter) -> lr_t, got {schedule!r}")
    return SCHEDULES[schedule]()
