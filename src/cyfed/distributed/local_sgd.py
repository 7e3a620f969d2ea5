"""Local SGD (H local steps between model averages) and its overlapped variant.

Rank r steps H times on its own shard (the same update rule and lr_t as the
synchronous loop), then every rank averages [p_r theta_r, p_r v_r] with ONE
in-place Allreduce, p_r = W_r / W the shard's share of the sample weight (Stich
2019, arXiv:1805.09767).  With overlap the average is a non-blocking Allreduce
completed one round later, the round's own progress applied on top of it
(CoCoD-SGD, arXiv:1906.12043).  See docs/distributed.md.
"""
import numpy as np

from cyfed.comm import raise_if_any
from cyfed.distributed import batches
from cyfed.distributed.loop import Loop


class LocalSGD(Loop):
    """The loop for local_steps > 1 or overlap=True."""

    def train(self, theta, velocity, prev_loss, steps):
        gd, comm = self.gd, self.run.comm
        momentum = bool(gd.momentum)
        # [theta_r, v_r] in one vector, averaged by one Allreduce (v_r only with momentum)
        state = np.concatenate([theta] + ([velocity] if momentum else []))
        avg = np.empty(state.size + 3)      # [share * state, loss sum, weight sum, error flag]
        anchor = state.copy()               # the last average: the same on every rank
        snapshot = np.empty_like(state)     # overlap: this rank's state in the average in flight
        share = self.weight_share()
        pending, error, end = None, None, steps.stop
        for t0 in range(steps.start, end, gd.local_steps):
            rounds = (t0, min(t0 + gd.local_steps, end))
            lr_sum, loss0, weight0, error = self.local_round(
                state, range(*rounds), error, None if pending is None else pending[0])
            if pending is not None:
                comm.wait(pending[0])
                state -= snapshot           # this round's progress, on the new average
                state += avg[:-3]
                stop, loss = self.averaged(avg, anchor, pending[1], error, prev_loss)
                if stop:
                    state[:] = anchor
                    break
                prev_loss = loss
            avg[:-3] = share * state
            avg[-3:] = loss0, weight0, 0.0 if error is None else 1.0
            if gd.overlap and rounds[1] < end:
                snapshot[:] = state
                pending = (comm.iallreduce_sum(avg), (*rounds, lr_sum))
                continue
            comm.allreduce_sum(avg)
            state[:] = avg[:-3]
            stop, loss = self.averaged(avg, anchor, (*rounds, lr_sum), error, prev_loss)
            if stop:
                break
            prev_loss = loss
            if self.save_due(rounds[1], t0):
                self.save_state(state, velocity, prev_loss)
        self.unpack(state, theta, velocity)
        return prev_loss

    def weight_share(self):
        """p_r = W_r / W (collective)."""
        data = self.run.data
        weights = self.run.comm.allgather_obj(float(data.sample_weight.sum())
                                              if len(data.sample_weight) else float(data.n))
        if not sum(weights) > 0:
            raise ValueError("sample_weight sums to 0 over all rows: weights must have a "
                             "positive sum")
        return weights[self.run.comm.rank] / sum(weights)

    def unpack(self, state, theta, velocity):
        p = theta.size
        theta[:] = state[:p]
        if self.gd.momentum:
            velocity[:] = state[p:]

    def save_state(self, state, velocity, prev_loss):
        p = self.run.model.n_params
        self.save(state[:p], state[p:] if self.gd.momentum else velocity, prev_loss, False)

    def local_round(self, state, steps, error, pending):
        """Local steps `steps` on this rank's shard, updating state [theta_r, v_r] in
        place and testing the request `pending` (if any) after each step, until a
        kernel error: (sum of lr_t, loss sum + l2 term and weight sum of the first
        step, error or None)."""
        gd, run = self.gd, self.run
        p, pen = run.model.n_params, run.model.n_penalized
        theta, velocity = state[:p], state[p:]
        sums = np.empty(p)
        lr_sum, loss0, weight0 = 0.0, 0.0, 0.0
        for t in steps:
            lr_t = self.lr_at(t)
            lr_sum += lr_t
            if error is None and run.data.n:
                rows = batches.minibatch(gd.seed, t, gd.batch_size, run.n_global, run.offset,
                                         run.data.n)
                loss_sum, weight_sum, _, error = self.local_sums(theta, rows, sums)
                with np.errstate(over="ignore", invalid="ignore"):   # checked at the average
                    if t == steps.start:
                        penalty = 0.5 * gd.l2 * float(theta[:pen] @ theta[:pen])
                        loss0, weight0 = loss_sum + penalty * weight_sum, weight_sum
                    if error is None and weight_sum > 0:
                        grad = sums / weight_sum
                        grad[:pen] += gd.l2 * theta[:pen]
                        self.step(grad, velocity, theta, lr_t)
            if pending is not None:
                run.comm.test(pending)
        return lr_sum, loss0, weight0, error

    def averaged(self, avg, anchor, rounds, error, prev_loss):
        """Book a completed model average: avg holds the sums over ranks of [p_r state_r,
        loss sum, weight sum, error flag] of the round (t0, t_end, sum of lr_t), and
        becomes the new anchor.  Returns (whether tol or gtol stops training, loss)."""
        gd, run = self.gd, self.run
        t0, t_end, lr_sum = rounds
        if avg[-1] > 0:
            raise_if_any(run.comm, error)
        if not avg[-2] > 0:
            raise ValueError("sample_weight sums to 0 over the rows of iteration "
                             f"{t0}: weights must have a positive sum")
        p = run.model.n_params
        with np.errstate(over="ignore", invalid="ignore"):
            loss = avg[-3] / avg[-2]
            grad_norm = float(np.linalg.norm(avg[:p] - anchor[:p])) / lr_sum
        lr_t = self.lr_at(t0)
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            self.diverged(anchor[:p].copy(), t0, loss, lr_t)
        anchor[:] = avg[:-3]
        gd.n_iter_ = t_end
        record = {"iter": t0, "loss": float(loss), "grad_norm": grad_norm, "lr": float(lr_t)}
        return self.record(record, prev_loss), loss
