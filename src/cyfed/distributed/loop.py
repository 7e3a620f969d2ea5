"""What the SPMD loops of `DistributedGD` share: the local kernel pass, the
collective full objective, the update rule, history records, divergence and
checkpoints.

A loop is built by `DistributedGD.fit` with the trainer (its hyper-parameters,
where results go) and the run (`GDRun`: communicator, bound model, data, ...)
and runs `train(theta, velocity, prev_loss, steps)`, updating theta and the
momentum velocity in place and returning the loss the next tol test compares.
"""
from dataclasses import dataclass

import numpy as np

from cyfed.comm import raise_if_any
from cyfed.distributed.step_size import auto_lr
from cyfed.training import Run


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""

@dataclass
class GDRun(Run):
    """A `DistributedGD` fit: the shared run state, plus the schedule, this rank's
    place in the global rows and the gradient codec (compression) if any."""
    schedule: object = None
    n_global: int = 0
    offset: int = 0
    codec: object = None

class Loop:
    """Base of the loops: see the module docstring."""

    def __init__(self, gd, run):
        self.gd, self.run = gd, run
        self.base_lr = None if gd.auto_lr else float(gd.lr)
        self.evaluations = 0        # full-objective passes (`evaluate`)

    def start(self, theta, t):
        """Collective, before the first step of a fit (not of a resumed one): lr="auto"
        estimates its rate here (`step_size.auto_lr`)."""
        if self.base_lr is None:
            self.base_lr = auto_lr(self, theta, t)

    def lr_at(self, t):
        """lr_t of the schedule at step t (a schedule reading the history gets it)."""
        gd, schedule = self.gd, self.run.schedule
        if getattr(schedule, "uses_history", False):
            return schedule(self.base_lr, t, gd.max_iter, gd.history_)
        return schedule(self.base_lr, t, gd.max_iter)

    def local_sums(self, theta, rows, buf, clip_norm=None):
        """Kernel sums of this rank's rows into buf: (loss_sum, weight_sum, n_clipped,
        error or None); an error (bad labels, weights) is returned, not raised, so that
        every rank reaches the next collective."""
        run = self.run
        out = buf[:run.model.n_params]
        if run.data.n == 0:
            out[:] = 0
            return 0.0, 0.0, 0, None
        try:
            return (*run.model.sums(run.data, theta, rows, out, run.threads, clip_norm), None)
        except ValueError as exc:
            out[:] = 0
            return 0.0, 0.0, 0, exc

    def sum_ranks(self, buf, t):
        """Add buf over the ranks in place: one Allreduce, or the gradient codec's sum."""
        if self.run.codec is not None:
            self.run.codec(buf, t)
        else:
            self.run.comm.allreduce_sum(buf)

    def summed(self, theta, rows, buf, t, clip_norm=None):
        """Collective: one kernel pass over this rank's `rows` and one sum over the ranks,
        leaving buf = [grad sums (p), loss sum, weight sum, clipped count, error flag]
        added over every rank; raises every rank's input error on every rank."""
        p = self.run.model.n_params
        loss_sum, weight_sum, n_clipped, error = self.local_sums(theta, rows, buf, clip_norm)
        buf[p:] = loss_sum, weight_sum, n_clipped, 0.0 if error is None else 1.0
        self.sum_ranks(buf, t)
        if buf[-1] > 0:
            raise_if_any(self.run.comm, error)

    def total_weight(self, buf, t):
        """The summed sample weights of `summed`'s buf, checked to be positive."""
        weight = buf[self.run.model.n_params + 1]
        if not weight > 0:
            raise ValueError("sample_weight sums to 0 over the rows of iteration "
                             f"{t}: weights must have a positive sum")
        return weight

    def regularised(self, theta, buf, scale):
        """(g, loss, ||g||) from `summed`'s buf: the sums / scale plus the L2 term
        (non-finite values are returned, for the caller's divergence check)."""
        p, pen, l2 = self.run.model.n_params, self.run.model.n_penalized, self.gd.l2
        with np.errstate(over="ignore", invalid="ignore"):
            grad = buf[:p] / scale
            grad[:pen] += l2 * theta[:pen]
            loss = buf[p] / scale + 0.5 * l2 * float(theta[:pen] @ theta[:pen])
            grad_norm = float(np.linalg.norm(grad))
        return grad, loss, grad_norm

    def objective(self, theta, buf, t):
        """Collective: (g, loss, ||g||) of the full-batch objective at theta -- one
        kernel pass over all this rank's rows and one Allreduce of p + 4 numbers."""
        self.summed(theta, None, buf, t)
        return self.regularised(theta, buf, self.total_weight(buf, t))

    def evaluate(self, theta, t):
        """Collective: (loss, g with frozen entries 0, ||g||) of the full-batch objective
        at theta -- one kernel pass and one Allreduce, counted in `evaluations`.
        Non-finite values are returned for the caller."""
        buf = np.empty(self.run.model.n_params + 4)
        grad, loss, _ = self.objective(theta, buf, t)
        grad[self.run.model.frozen] = 0
        self.evaluations += 1
        with np.errstate(over="ignore", invalid="ignore"):
            return float(loss), grad, float(np.linalg.norm(grad))

    def start_point(self, theta, t, gtol):
        """Collective: the loss and gradient at the start into self.loss / self.grad (a
        non-finite one is divergence); whether theta already satisfies gtol."""
        self.loss, self.grad, norm = self.evaluate(theta, t)
        if not (np.isfinite(self.loss) and np.isfinite(norm)):
            self.diverged(theta, t, self.loss, 0.0)
        return norm <= gtol

    def data_weight(self):
        """Collective: W, the sum of the sample weights over every rank's rows."""
        data = self.run.data
        local = float(np.sum(data.sample_weight)) if len(data.sample_weight) else data.n
        return float(self.run.comm.allreduce_sum(np.array([local], dtype=np.float64))[0])

    def step(self, grad, velocity, theta, lr_t):
        """theta <- theta - lr_t step, step by the momentum rule (PyTorch's SGD):
        v <- momentum v + g;  step = g + momentum v (Nesterov), v, or g without momentum.
        The frozen parameters (an intercept not fitted) do not move."""
        momentum = self.gd.momentum
        if momentum:
            velocity *= momentum
            velocity += grad
            step = grad + momentum * velocity if self.gd.nesterov else velocity
        else:
            step = grad
        update = lr_t * step
        update[self.run.model.frozen] = 0
        theta -= update

    def record(self, record, prev_loss):
        """Append `record` stamped with the time and this rank's bytes, run the
        callback; whether tol or gtol stops training."""
        gd, run = self.gd, self.run
        gd.history_.append(run.stamp(record))
        if run.callback is not None:
            run.callback(record)
        loss = record["loss"]
        return (gd.gtol is not None and record["grad_norm"] <= gd.gtol) or (
            gd.tol is not None and prev_loss is not None
            and abs(prev_loss - loss) <= gd.tol * max(abs(prev_loss), 1e-300))

    def diverged(self, theta, t, loss, lr_t):
        """Keep the last finite model, blame non-finite input if any rank has some, else
        raise DivergenceError (collective)."""
        run = self.run
        self.gd._store(run.model, theta)
        raise_if_any(run.comm, run.model.non_finite_input(run.data))
        hint = ("try a smaller learning rate" if self.gd.solver_ == "gd"
                else "rescale X or raise l2")
        raise DivergenceError(
            f"training diverged at iteration {t}: the loss or gradient is not finite "
            f"(loss={loss}, lr={lr_t}); {hint}. coef_/intercept_ hold the last finite model.")

    def state_dict(self):
        """The loop's own state to checkpoint beside theta ({name: array}), or None."""
        return None

    def load_state_dict(self, state):
        """Continue from `state_dict()`'s arrays of a checkpoint."""

    def save(self, theta, velocity, prev_loss, done):
        """Checkpoint (collective when a codec holds per-rank state)."""
        gd, run = self.gd, self.run
        arrays = {"theta": theta, "velocity": velocity}
        state = self.state_dict()
        if state is not None:
            arrays["loop"] = state
        if run.codec is not None:           # every rank's residual and compressor state
            states = run.comm.gather_obj(run.codec.state_dict())
            if run.comm.rank == 0:
                arrays["compression"] = {part: {key: value for state in states
                                                for key, value in state[part].items()}
                                         for part in states[0]}
        if run.comm.rank != 0:
            return
        meta = {"iteration": gd.n_iter_, "done": done, "prev_loss": prev_loss,
                "history": gd.history_}
        if gd.privacy is not None:
            gd._account()
            meta["accountant"] = gd.accountant_.state_dict()
        run.checkpoints.save(run.comm, arrays, meta)

    def save_due(self, t_done, t_before=None):
        """Whether a checkpoint is due after step t_done (local SGD: any multiple of
        checkpoint_every passed since t_before); never at the end (fit saves that)."""
        gd = self.gd
        if self.run.checkpoints is None or t_done >= gd.max_iter:
            return False
        every = gd.checkpoint_every
        if t_before is None:
            return t_done % every == 0
        return t_done // every > t_before // every
