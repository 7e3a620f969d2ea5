"""lr="auto": gradient descent's step from the curvature of the full-batch objective.

Linear models.  The Hessian of f(theta) = (1/W) sum_i w_i l(z_i) + (l2/2)||coef||^2 is
A^T diag(w_i l''(z_i)) A / W + l2 I (penalised entries), A = [X 1], and l'' <= c
(c = 2 squared, 1/4 logistic, 1/2 softmax: diag(p) - p p^T has eigenvalues <= 1/2), so
the gradient is L-Lipschitz with

    L <= c lambda_max(G) + l2,        G = A^T diag(w) A / W.

lambda_max(G) comes from power iteration; G v costs one fused kernel pass and one
Allreduce: it is half the weighted-mean gradient of the squared loss with targets 0
at v.  Other models get the local curvature at the start theta_0 instead, by power
iteration on finite differences of the gradient, H v ~ (g(theta_0 + h v) - g(theta_0)) / h.

The step is lr = 1 / L (the descent lemma's step: every plain gradient step lowers
f).  Power iteration approaches lambda_max from below, so full-batch GD keeps a
safeguard (`Backtracking`): a step that raises the loss is undone, momentum is
reset, and a step that raises it right after a reset halves the rate.
"""
import numpy as np

#: Power iteration stops when the Rayleigh quotient changes by less than this (relative).
POWER_RTOL = 1e-2
POWER_MAX_ITER = 30
#: Finite-difference step (relative to max(1, ||theta_0||)) of the generic estimate.
FD_STEP = 1e-4


def auto_lr(loop, theta0, t):
    """Collective: 1 / L for the loop's model and data (see the module docstring)."""
    model, run = loop.run.model, loop.run
    gram = model.gram(run.data)
    if gram is not None:
        gram_model, gram_data, curvature = gram
        lam = power_iteration(gram_model.n_params, gram_model.frozen,
                              lambda v: gram_product(run, gram_model, gram_data, v))
        return 1.0 / (curvature * lam + loop.gd.l2)
    p = model.n_params
    buf = np.empty(p + 4)
    g0 = loop.objective(theta0, buf, t)[0]
    h = FD_STEP * max(1.0, float(np.linalg.norm(theta0)))
    lam = power_iteration(p, model.frozen,
                          lambda v: (loop.objective(theta0 + h * v, buf, t)[0] - g0) / h)
    return 1.0 / max(lam, np.finfo(float).tiny)


def gram_product(run, model, data, v):
    """Collective: G v, from one squared-loss kernel pass at v with targets 0 (whose
    gradient sums are 2 A^T diag(w) A v) and one Allreduce."""
    p = model.n_params
    buf = np.zeros(p + 1)
    if data.n:
        buf[p] = model.sums(data, v, None, buf[:p], run.threads)[1]
    run.comm.allreduce_sum(buf)
    return buf[:p] / (2.0 * buf[p]) if buf[p] > 0 else np.zeros(p)


def power_iteration(p, frozen, apply):
    """The largest eigenvalue of the symmetric positive semi-definite operator `apply`
    on the non-frozen entries, from a fixed start (the same on every rank)."""
    v = np.random.default_rng(0).standard_normal(p)
    v[frozen] = 0
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(POWER_MAX_ITER):
        w = apply(v)
        w[frozen] = 0
        new = float(v @ w)
        norm = float(np.linalg.norm(w))
        if not (np.isfinite(new) and norm > 0):
            break
        converged = abs(new - lam) <= POWER_RTOL * abs(new)
        lam, v = new, w / norm
        if converged:
            break
    return max(lam, 0.0)


class Backtracking:
    """The safeguard of full-batch GD with lr="auto" (see the module docstring):
    `scale` multiplies the rate; `accept` is called with each new point's loss."""

    def __init__(self, dtype):
        self.scale = 1.0
        self.theta = self.grad = self.loss = None
        self.after_reset = True             # the last step started from zero momentum
        self.slack = 64 * np.finfo(dtype).eps

    def accept(self, theta, velocity, grad, loss):
        """(grad, loss, rejected): keep the point, or undo the last step -- theta back,
        momentum reset, the rate halved if the step already had no momentum."""
        if self.loss is None or loss <= self.loss + self.slack * abs(self.loss):
            self.theta, self.grad, self.loss = theta.copy(), grad.copy(), float(loss)
            self.after_reset = not velocity.any()
            return grad, loss, False
        if self.after_reset:
            self.scale *= 0.5
        theta[:] = self.theta
        velocity[:] = 0
        self.after_reset = True
        return self.grad.copy(), self.loss, True

    def state_dict(self):
        return {"theta": self.theta, "grad": self.grad,
                "scalars": np.array([self.scale, self.loss, self.after_reset], dtype=float)}

    def load_state_dict(self, state):
        self.theta, self.grad = np.array(state["theta"]), np.array(state["grad"])
        scale, loss, after_reset = state["scalars"]
        self.scale, self.loss, self.after_reset = float(scale), float(loss), bool(after_reset)
