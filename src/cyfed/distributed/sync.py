"""Synchronous data-parallel GD: one Allreduce of the gradient sums per step.

Step t: each rank sums its rows' weighted losses and gradients in one kernel
pass into [grad sums (p), loss sum, weight sum, clipped count, error flag], one
in-place Allreduce (or `GradientCompression`) adds the buffers over the ranks,
and every rank applies the same update

    g_t = (sum_r grad_sums_r) / (sum_r weight_sum_r) + l2 theta_t[:n_penalized]

With DP-SGD the batch is a Poisson sample, each example's gradient is clipped
to C in the kernel, one noise draw shared by every rank is added after the
Allreduce and the denominator is the expected batch size q N (docs/distributed.md).
Full-batch steps with lr="auto" are safeguarded by `step_size.Backtracking`.
"""
import numpy as np

from cyfed import accountant
from cyfed.distributed import batches
from cyfed.distributed.loop import Loop
from cyfed.distributed.step_size import Backtracking


class SynchronousGD(Loop):
    """The loop for local_steps=1 without overlap."""

    def __init__(self, gd, run):
        super().__init__(gd, run)
        dp = gd.privacy
        self.epsilon_after = None
        if dp is not None and dp.delta is not None:
            self.epsilon_after = accountant.EpsilonCurve(gd.noise_multiplier_,
                                                         float(dp.sample_rate), dp.delta)
        self.guard = None
        if gd.auto_lr and gd.batch_size is None and dp is None:
            self.guard = Backtracking(run.data.dtype)

    def train(self, theta, velocity, prev_loss, steps):
        buf = np.empty(self.run.model.n_params + 4)
        for t in steps:
            grad, loss, lr_t, record = self.gradient(theta, buf, t)
            rejected = False
            if self.guard is not None:
                grad, loss, rejected = self.guard.accept(theta, velocity, grad, loss)
                if rejected:
                    record.update(loss=loss, grad_norm=float(np.linalg.norm(grad)),
                                  lr=self.lr_at(t), rejected=True)
                    lr_t = record["lr"]
            if self.record(record, None if rejected else prev_loss):   # no tol on an undo
                break
            prev_loss = loss
            self.step(grad, velocity, theta, lr_t)
            self.gd.n_iter_ = t + 1
            if self.save_due(t + 1):
                self.save(theta, velocity, prev_loss, False)
        return prev_loss

    def lr_at(self, t):
        return super().lr_at(t) * (self.guard.scale if self.guard is not None else 1.0)

    def state_dict(self):
        return None if self.guard is None or self.guard.loss is None else {
            "guard": self.guard.state_dict(), "lr": np.array([self.base_lr])}

    def load_state_dict(self, state):
        self.guard.load_state_dict(state["guard"])
        self.base_lr = float(state["lr"][0])

    def batch(self, t):
        """(this rank's rows of step t or None for all, the global batch size or None)."""
        gd, run = self.gd, self.run
        if gd.privacy is None:
            return batches.minibatch(gd.seed, t, gd.batch_size, run.n_global, run.offset,
                                     run.data.n), None
        return batches.poisson_batch(gd.seed, t, float(gd.privacy.sample_rate), run.n_global,
                                     run.offset, run.data.n)

    def gradient(self, theta, buf, t):
        """(g_t, the loss at theta_t, lr_t, the history record) of step t (collective)."""
        gd, run = self.gd, self.run
        rows, batch_size = self.batch(t)
        clip = None if gd.privacy is None else float(gd.privacy.clip_norm)
        self.summed(theta, rows, buf, t, clip)
        grad, loss, grad_norm = self.regularised(theta, buf, self.denominator(buf, t))
        lr_t = self.lr_at(t)
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            if self.guard is None or self.guard.loss is None:
                self.diverged(theta, t, loss, lr_t)
            loss = np.inf                   # the safeguard undoes the step
        record = {"iter": t, "loss": float(loss), "grad_norm": grad_norm, "lr": float(lr_t)}
        if gd.privacy is not None:
            record.update(self.privacy_record(buf[run.model.n_params + 2], batch_size, t))
        return grad, loss, lr_t, record

    def denominator(self, buf, t):
        """The summed weights, or with DP-SGD the expected batch size q N (after adding
        the step's noise to the gradient sums)."""
        gd, run = self.gd, self.run
        p = run.model.n_params
        if gd.privacy is None:
            return self.total_weight(buf, t)
        std = gd.noise_multiplier_ * float(gd.privacy.clip_norm)
        buf[:p] += batches.dp_noise(gd.seed, t, std, p, run.model.frozen)
        return float(gd.privacy.sample_rate) * run.n_global

    def privacy_record(self, n_clipped, batch_size, t):
        record = {"batch_size": batch_size,
                  "clipped_fraction": float(n_clipped / batch_size) if batch_size else 0.0}
        if self.epsilon_after is not None:
            record["epsilon"] = self.epsilon_after(t + 1)
        return record
