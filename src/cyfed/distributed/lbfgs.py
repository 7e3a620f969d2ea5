"""Full-batch L-BFGS over the SPMD loop: no learning rate to guess.

Iteration t, from theta_t with loss f_t and gradient g_t (frozen entries zeroed):

    d_t = -H_t g_t          two-loop recursion over the last m pairs (s_i, y_i),
                            H_0 = gamma I, gamma = s'y / y'y of the newest pair
    theta_{t+1} = theta_t + a_t d_t,   a_t from a strong-Wolfe line search
    s_t = theta_{t+1} - theta_t,  y_t = g_{t+1} - g_t   (kept when s'y > eps |s| |y|)

(Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithms 7.4/7.5 and the
line search of Algorithms 3.5/3.6 with safeguarded cubic interpolation in zoom).
Every trial point of the line search is one fused kernel pass and one in-place
Allreduce of p + 4 numbers (`Loop.objective`, shared with synchronous GD); all
the rest -- directions, dot products, step lengths -- is computed redundantly
and identically on every rank from the summed buffer, so the ranks never
exchange anything else and iterate in lockstep.
"""
import numpy as np

from cyfed.distributed.loop import Loop

C1, C2 = 1e-4, 0.9          # sufficient decrease, curvature (strong Wolfe)
#: A pair is dropped unless s'y > CURVATURE_EPS |s| |y|, which keeps H_t positive
#: definite when rounding (float32 data) blurs y near the optimum.
CURVATURE_EPS = 1e-10
#: The default gtol (scipy's pgtol): stop when ||g_t|| <= GTOL_DEFAULT.  A gradient
#: relative to ||g_0|| would stop badly scaled problems far from the optimum.
GTOL_DEFAULT = 1e-5
MAX_EVALUATIONS = 25        # kernel passes per line search
EXTRAPOLATE = 2.0           # bracketing phase: a_{i+1} = EXTRAPOLATE a_i


class LBFGS(Loop):
    """The loop for solver="lbfgs" (see the module docstring)."""

    def __init__(self, gd, run):
        super().__init__(gd, run)
        self.pairs = []             # [(s, y, rho)], oldest first, at most lbfgs_memory
        self.grad = None            # g at the current theta (frozen entries zeroed)
        self.loss = None

    # -- the loop ------------------------------------------------------------------

    def train(self, theta, velocity, prev_loss, steps):
        gd = self.gd
        gtol = GTOL_DEFAULT if gd.gtol is None else gd.gtol
        if len(steps) == 0:
            return prev_loss
        # a fresh start (a resumed run has its state already)
        if self.grad is None and self.start_point(theta, steps[0], gtol):
            return self.loss
        for t in steps:
            direction = self.direction(theta, t)
            slope = float(self.grad @ direction)
            if not slope < 0:       # lost descent to rounding: restart from -g
                self.pairs.clear()
                direction = -self.grad
                slope = -float(self.grad @ self.grad)
            found = self.line_search(theta, direction, slope, self.first_step(slope), t)
            if found is None:
                record = {"iter": t, "loss": self.loss,
                          "grad_norm": float(np.linalg.norm(self.grad)), "lr": 0.0,
                          "evaluations": self.evaluations, "line_search": "failed"}
                self.record(record, None)
                break
            step, new_theta, loss, grad, norm = found
            self.remember(new_theta - theta, grad - self.grad)
            theta[:] = new_theta
            prev_loss, self.loss, self.grad = self.loss, loss, grad
            gd.n_iter_ = t + 1
            record = {"iter": t, "loss": loss, "grad_norm": norm, "lr": step,
                      "evaluations": self.evaluations}
            stop = self.record(record, prev_loss)
            if stop or norm <= gtol:
                break
            if self.save_due(t + 1):
                self.save(theta, velocity, self.loss, False)
        return self.loss

    def first_step(self, slope):
        """The line search's first trial: 1, or 1/sqrt(-g'd) before any curvature pair."""
        return 1.0 / np.sqrt(-slope) if not self.pairs else 1.0

    def direction(self, theta, t):
        """-H g by the two-loop recursion (frozen entries 0, as in every pair)."""
        q = self.grad.copy()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * float(s @ q)
            q -= alpha * y
            alphas.append(alpha)
        if self.pairs:
            s, y, _ = self.pairs[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas)):
            beta = rho * float(y @ q)
            q += (alpha - beta) * s
        q = -q
        q[self.run.model.frozen] = 0
        return q

    def remember(self, s, y):
        """Keep (s, y) unless its curvature s'y is not safely positive."""
        sy = float(s @ y)
        if not sy > CURVATURE_EPS * float(np.linalg.norm(s)) * float(np.linalg.norm(y)):
            return
        self.pairs.append((s, y, 1.0 / sy))
        del self.pairs[:-self.gd.lbfgs_memory]

    # -- the strong-Wolfe line search ---------------------------------------------------

    def line_search(self, theta, direction, slope, step, t):
        """Nocedal & Wright Algorithm 3.5: (a, theta + a d, loss, g, ||g||) satisfying
        the strong Wolfe conditions -- or, when MAX_EVALUATIONS passes do not find one,
        the best point of sufficient decrease seen -- or None when no trial point
        decreased the loss (a non-finite one there is divergence)."""
        f0 = self.loss
        trial = Trial(0.0, theta, f0, self.grad, float(np.linalg.norm(self.grad)), slope)
        prev, budget = trial, MAX_EVALUATIONS
        for i in range(MAX_EVALUATIONS):
            point = self.trial(theta, direction, step, t)
            budget -= 1
            if not point.armijo(f0, slope) or (i > 0 and point.f >= prev.f):
                return self.zoom(theta, direction, slope, prev, point, budget, t)
            if abs(point.slope) <= -C2 * slope:
                return point.result()
            if point.slope >= 0:
                return self.zoom(theta, direction, slope, point, prev, budget, t)
            prev, step = point, EXTRAPOLATE * step
        return prev.result() if prev.a > 0 else None

    def zoom(self, theta, direction, slope, lo, hi, budget, t):
        """Nocedal & Wright Algorithm 3.6 on the bracket (lo, hi): lo satisfies
        sufficient decrease and has the lowest loss so far."""
        f0, last = self.loss, hi
        for _ in range(budget):
            step = interpolate(lo, hi)
            if not (lo.a < step < hi.a or hi.a < step < lo.a):
                break                               # the bracket is below rounding
            point = last = self.trial(theta, direction, step, t)
            if not point.armijo(f0, slope) or point.f >= lo.f:
                hi = point
            else:
                if abs(point.slope) <= -C2 * slope:
                    return point.result()
                if point.slope * (hi.a - lo.a) >= 0:
                    hi = lo
                lo = point
        if lo.a > 0:                 # sufficient decrease without the curvature condition
            return lo.result()
        if not np.isfinite(last.f) or not np.isfinite(last.norm):
            self.diverged(theta, t, last.f, last.a)
        return None

    def trial(self, theta, direction, step, t):
        """Collective: the objective at theta + step d (one pass, one Allreduce)."""
        point = theta + step * direction
        f, grad, norm = self.evaluate(point, t)
        with np.errstate(over="ignore", invalid="ignore"):
            return Trial(step, point, f, grad, norm, float(grad @ direction))

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self):
        if self.grad is None:
            return None
        p = self.run.model.n_params
        return {"s": np.array([s for s, _, _ in self.pairs]).reshape(-1, p),
                "y": np.array([y for _, y, _ in self.pairs]).reshape(-1, p),
                "rho": np.array([rho for _, _, rho in self.pairs], dtype=float),
                "grad": self.grad,
                "scalars": np.array([self.loss, self.evaluations], dtype=float)}

    def load_state_dict(self, state):
        self.pairs = [(np.array(s), np.array(y), float(rho))
                      for s, y, rho in zip(state["s"], state["y"], state["rho"])]
        self.grad = np.array(state["grad"])
        loss, evaluations = state["scalars"]
        self.loss, self.evaluations = float(loss), int(evaluations)


class Trial:
    """One point of the line search: step a, theta, loss f, gradient, its norm, and the
    directional derivative slope = g'd."""

    def __init__(self, a, theta, f, grad, norm, slope):
        self.a, self.theta, self.f, self.grad, self.norm, self.slope = (
            float(a), theta, f, grad, norm, slope)

    def armijo(self, f0, slope0):
        """Sufficient decrease (false for non-finite values: the step is too long)."""
        return (np.isfinite(self.f) and np.isfinite(self.slope)
                and self.f <= f0 + C1 * self.a * slope0)

    def result(self):
        return self.a, self.theta, self.f, self.grad, self.norm


def interpolate(lo, hi):
    """The minimiser of the cubic through (a, f, f') at lo and hi (Nocedal & Wright
    eq. 3.59), kept at least a tenth of the bracket from either end; bisection where
    the cubic has no minimiser or hi is not finite."""
    a, b = lo.a, hi.a
    width = b - a
    mid = a + 0.5 * width
    if not (np.isfinite(hi.f) and np.isfinite(hi.slope)):
        return mid
    d1 = lo.slope + hi.slope - 3.0 * (lo.f - hi.f) / (a - b)
    radicand = d1 * d1 - lo.slope * hi.slope
    if not radicand >= 0:
        return mid
    d2 = np.copysign(np.sqrt(radicand), width)
    denominator = hi.slope - lo.slope + 2.0 * d2
    if denominator == 0:
        return mid
    step = b - width * (hi.slope + d2 - d1) / denominator
    low, high = sorted((a + 0.1 * width, b - 0.1 * width))
    return float(step) if low <= step <= high else mid
