"""Second-order solvers of linear models over the SPMD loop: no learning rate.

Both use the model's fused second-order kernels (`cyfed.hessian`): per-row
curvature factors D at theta (one pass), then Hessian-vector products
H v = (sum_r sum_i w_i x_i D_i x_i^T v) / W + l2 v (one pass and one Allreduce of p
numbers each) or the whole Hessian (one pass and one Allreduce of p^2 numbers).
Every rank computes the same steps from the summed buffers.

* `NewtonCholesky` (solver="newton-cholesky", few parameters): the exact Newton
  direction d = -H^{-1} g by a Cholesky solve, then L-BFGS's strong-Wolfe line
  search from a = 1 (Nocedal & Wright, Algorithm 3.5).
* `TrustRegionNewton` (solver="newton-cg"): TRON (Lin & More 1999; Lin, Weng &
  Keerthi, JMLR 2008; the preconditioned trust-region rules of LIBLINEAR's
  tron.cpp, Hsia, Chiang & Lin, ACML 2018).  Each iteration approximately
  minimises the model q(s) = g's + s'Hs/2 within ||s||_M <= delta by
  preconditioned conjugate gradient (Steihaug; M = (1 - a) l2 + a diag(H),
  a = 0.01), stopping at a residual of 0.1 of the initial one, takes s when the
  actual reduction is at least eta0 of the predicted one, and rescales delta by
  how well q predicted f.
"""
import numpy as np

from cyfed.distributed.lbfgs import GTOL_DEFAULT, LBFGS
from cyfed.distributed.loop import Loop

ETA0, ETA1, ETA2 = 1e-4, 0.25, 0.75             # TRON's acceptance / radius thresholds
SIGMA1, SIGMA2, SIGMA3 = 0.25, 0.5, 4.0         # TRON's radius factors
CG_RTOL = 0.1                               # CG stops at ||r||_M^-1 <= CG_RTOL ||g||_M^-1
PCG_ALPHA = 0.01                            # LIBLINEAR's preconditioner mix


class SecondOrder:
    """What both loops share: the curvature factors at theta."""

    def curvature_at(self, theta, count=True):
        """This rank's per-row curvature factors at theta (None without rows); one
        pass, counted in `evaluations` (not when a resumed run redoes it)."""
        run = self.run
        self.evaluations += count
        return run.model.curvature(run.data, theta, run.threads) if run.data.n else None


class NewtonCholesky(SecondOrder, LBFGS):
    """The loop for solver="newton-cholesky": L-BFGS's loop and line search with the
    exact Newton direction and no (s, y) memory."""

    def train(self, theta, velocity, prev_loss, steps):
        self.weight = self.data_weight()
        return super().train(theta, velocity, prev_loss, steps)

    def first_step(self, slope):
        return 1.0

    def remember(self, s, y):
        """Newton keeps no curvature pairs."""

    def direction(self, theta, t):
        """-H^{-1} g over the free entries (one curvature pass, one Hessian pass and one
        Allreduce of p^2 numbers).  Where f is invariant (`Model.gauge`) H is made
        regular by adding u u' (u the unit invariant directions, scaled to H's mean
        eigenvalue), which leaves the minimum-norm step; a least-squares solve if H is
        still singular."""
        run, gd = self.run, self.gd
        model = run.model
        p = model.n_params
        buf = np.zeros(p * p)
        curv = self.curvature_at(theta)
        if run.data.n:
            model.hessian_sums(run.data, curv, buf.reshape(p, p), run.threads)
        run.comm.allreduce_sum(buf)
        self.evaluations += 1
        H = buf.reshape(p, p) / self.weight
        pen = np.arange(model.n_penalized)
        H[pen, pen] += gd.l2
        scale = np.trace(H) / p
        for block in model.gauge(gd.l2 > 0):    # g is orthogonal to these directions
            H[np.ix_(block, block)] += scale / len(block)
        free = np.ones(p, dtype=bool)
        free[model.frozen] = False
        Hf, gf = H[np.ix_(free, free)], self.grad[free]
        import scipy.linalg     # here, not at import: it costs every CLI start ~0.3 s

        direction = np.zeros(p)
        try:
            direction[free] = -scipy.linalg.cho_solve(scipy.linalg.cho_factor(Hf), gf)
        except (np.linalg.LinAlgError, ValueError):
            direction[free] = -np.linalg.lstsq(Hf, gf, rcond=None)[0]
        return direction


class TrustRegionNewton(SecondOrder, Loop):
    """The loop for solver="newton-cg" (see the module docstring)."""

    def __init__(self, gd, run):
        super().__init__(gd, run)
        self.grad = self.loss = self.delta = None

    def hess_vec(self, curv, v):
        """Collective: H v at the current theta (frozen entries 0)."""
        run, model = self.run, self.run.model
        out = np.zeros(model.n_params)
        if run.data.n:
            model.hess_vec_sums(run.data, curv, v, out, run.threads)
        run.comm.allreduce_sum(out)
        self.evaluations += 1
        out /= self.weight
        out[:model.n_penalized] += self.gd.l2 * v[:model.n_penalized]
        out[model.frozen] = 0
        return out

    def preconditioner(self, curv, count=True):
        """Collective: M = (1 - a) l2 + a diag(H) (a = PCG_ALPHA; LIBLINEAR's PCG
        preconditioner in cyfed's scaling), constant along the invariant directions of
        `Model.gauge` (so CG never drifts along them), floored at a tiny fraction of its mean;
        one pass for the local diagonal sums and one Allreduce of p numbers."""
        run, model = self.run, self.run.model
        diag = np.zeros(model.n_params)
        if run.data.n:
            model.hessian_diag_sums(run.data, curv, diag)
        run.comm.allreduce_sum(diag)
        self.evaluations += count
        diag /= self.weight
        diag[:model.n_penalized] += self.gd.l2
        M = (1.0 - PCG_ALPHA) * self.gd.l2 + PCG_ALPHA * diag
        M[model.frozen] = 1.0
        for block in model.gauge(self.gd.l2 > 0):   # keep M^-1 r orthogonal to invariances
            M[block] = M[block].mean()
        floor = 1e-12 * float(np.mean(M)) if np.mean(M) > 0 else 1.0
        return np.maximum(M, floor)

    def steihaug(self, curv, M, delta):
        """(s, r = -g - H s, whether s reached the boundary): preconditioned CG on
        H s = -g inside ||s||_M <= delta, ||s||_M^2 = s' diag(M) s (Steihaug 1983, as
        LIBLINEAR's trpcg)."""
        g = self.grad
        s, r = np.zeros_like(g), -g
        z = r / M
        d = z.copy()
        zr = float(z @ r)
        tol = CG_RTOL * np.sqrt(zr)
        for _ in range(len(g)):
            if np.sqrt(zr) <= tol:
                break
            Hd = self.hess_vec(curv, d)
            dHd = float(d @ Hd)
            alpha = zr / dHd if dHd > 0 else np.inf
            trial = s + alpha * d
            if not np.sqrt(float(trial @ (M * trial))) <= delta:    # to the boundary along d
                sd, ss, dd = float(s @ (M * d)), float(s @ (M * s)), float(d @ (M * d))
                rad = np.sqrt(max(sd * sd + dd * (delta * delta - ss), 0.0))
                tau = (delta * delta - ss) / (sd + rad) if sd >= 0 else (rad - sd) / dd
                return s + tau * d, r - tau * Hd, True
            s = trial
            r -= alpha * Hd
            z = r / M
            zr_new = float(z @ r)
            d = z + (zr_new / zr) * d
            zr = zr_new
        return s, r, False

    def train(self, theta, velocity, prev_loss, steps):
        gd = self.gd
        gtol = GTOL_DEFAULT if gd.gtol is None else gd.gtol
        if len(steps) == 0:
            return prev_loss
        self.weight = self.data_weight()
        if self.grad is None:       # a fresh start (a resumed run has its state already)
            if self.start_point(theta, steps[0], gtol):
                return self.loss
            curv = self.curvature_at(theta)
            M = self.preconditioner(curv)
            self.delta = float(np.sqrt(self.grad @ (self.grad / M)))
        else:
            curv = self.curvature_at(theta, count=False)
            M = self.preconditioner(curv, count=False)
        for t in steps:
            s, r, boundary = self.steihaug(curv, M, self.delta)
            gs = float(self.grad @ s)
            predicted = -0.5 * (gs - float(s @ r))
            loss, grad, norm = self.evaluate(theta + s, t)
            actual = self.loss - loss if np.isfinite(loss) and np.isfinite(norm) else -np.inf
            snorm = float(np.sqrt(s @ (M * s)))
            self.delta = self.new_radius(t == 0, snorm, gs, loss, actual, predicted, boundary)
            accepted = actual > ETA0 * predicted
            if accepted:
                theta += s
                prev_loss, self.loss, self.grad = self.loss, loss, grad
                curv = self.curvature_at(theta)
                M = self.preconditioner(curv)
            gd.n_iter_ = t + 1
            norm = float(np.linalg.norm(self.grad))
            record = {"iter": t, "loss": self.loss, "grad_norm": norm,
                      "lr": 1.0 if accepted else 0.0, "radius": self.delta,
                      "evaluations": self.evaluations}
            if self.record(record, prev_loss if accepted else None) or norm <= gtol:
                break
            if predicted <= 0 or (abs(actual) <= 1e-12 * abs(self.loss)
                                  and abs(predicted) <= 1e-12 * abs(self.loss)):
                break                           # no further progress is representable
            if self.save_due(t + 1):
                self.save(theta, velocity, self.loss, False)
        return self.loss

    def new_radius(self, first, snorm, gs, loss, actual, predicted, boundary):
        """LIBLINEAR's trust-region update from the ratio actual / predicted reduction
        (snorm = ||s||_M), alpha the minimiser of the quadratic interpolating f along s."""
        delta = self.delta
        if first:
            delta = min(delta, snorm)
        curvature = loss - self.loss - gs       # = -actual - gs
        if not np.isfinite(curvature):
            return SIGMA1 * min(delta, snorm)
        alpha = SIGMA3 if curvature <= 0 else max(SIGMA1, -0.5 * gs / curvature)
        if actual < ETA0 * predicted:
            return min(alpha * snorm, SIGMA2 * delta)
        if actual < ETA1 * predicted:
            return max(SIGMA1 * delta, min(alpha * snorm, SIGMA2 * delta))
        if actual < ETA2 * predicted:
            return max(SIGMA1 * delta, min(alpha * snorm, SIGMA3 * delta))
        if boundary:
            return SIGMA3 * delta
        return max(delta, min(alpha * snorm, SIGMA3 * delta))

    # -- checkpoints -----------------------------------------------------------------

    def state_dict(self):
        if self.grad is None:
            return None
        return {"grad": self.grad,
                "scalars": np.array([self.loss, self.delta, self.evaluations], dtype=float)}

    def load_state_dict(self, state):
        self.grad = np.array(state["grad"])
        loss, delta, evaluations = state["scalars"]
        self.loss, self.delta, self.evaluations = float(loss), float(delta), int(evaluations)
