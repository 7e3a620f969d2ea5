"""`DistributedGD`: the trainer -- its hyper-parameters, set-up, results and inference.

The algorithms are loops of their own modules (`sync`, `local_sgd`, `lbfgs`) over the
shared `loop.Loop`; docs/distributed.md explains them at length.
"""
import numpy as np

from cyfed import _validation as check
from cyfed._params import ParamsMixin
from cyfed import accountant, checkpoint, compress, training
from cyfed.comm import get_comm, on_every_rank, thread_choice
from cyfed.distributed.compressed import GradientCompression
from cyfed.distributed.lbfgs import LBFGS
from cyfed.distributed.local_sgd import LocalSGD
from cyfed.distributed.loop import GDRun
from cyfed.distributed.newton import NewtonCholesky, TrustRegionNewton
from cyfed.distributed.sync import SynchronousGD
from cyfed.models import LinearModel, as_model, r2_score
from cyfed.privacy import DPSGD
from cyfed.schedules import get_schedule
from cyfed.standardize import Standardized, feature_moments


SOLVERS = ("gd", "lbfgs", "newton-cg", "newton-cholesky", "auto")
SECOND_ORDER = {"lbfgs": LBFGS, "newton-cg": TrustRegionNewton,
                "newton-cholesky": NewtonCholesky}
#: Options of gradient descent the other solvers refuse, with their neutral values.
FULL_BATCH = {"batch_size": None, "momentum": 0.0, "privacy": None, "local_steps": 1,
              "overlap": False, "compression": None}
#: solver="auto" takes exact Newton up to this many parameters (d k + k), L-BFGS above.
NEWTON_CHOLESKY_MAX_PARAMS = 500


class DistributedGD(ParamsMixin):
    """Full-batch or mini-batch gradient descent on data sharded over ranks (SPMD).

    Every rank calls ``fit(X_local, y_local)`` with its own shard; step t

        g_t = (sum_r grad_sums_r) / (sum_r weight_sum_r) + l2 theta_t
        v_t = momentum v_{t-1} + g_t,  step = g_t + momentum v_t (Nesterov) or v_t
        theta_{t+1} = theta_t - lr_t step

    with one in-place Allreduce of [grad sums, loss sum, weight sum, ...] per
    step; mini-batches and DP-SGD's Poisson batches are drawn from the global row
    space seeded by (seed, t), so the trajectory does not depend on the number of
    ranks.  Long-form documentation: docs/distributed.md.

    Parameters
    ----------
    loss : {"squared", "logistic", "softmax"} or cyfed.models.Model
        A loss name trains the compiled linear model; a `Model` (e.g.
        `cyfed.models.CallableModel`) trains any flat-parameter model.
    solver : {"gd", "lbfgs", "newton-cg", "newton-cholesky", "auto"}
        "gd": the update above.  The others need no learning rate (lr and lr_schedule
        are ignored) and take full-batch steps: "lbfgs" (Nocedal & Wright, Algorithm
        7.5, strong-Wolfe line search; any model), "newton-cg" (TRON: trust-region
        Newton with Steihaug CG over fused Hessian-vector products, as LIBLINEAR) and
        "newton-cholesky" (exact Newton steps from the Hessian built in one fused
        pass, then the line search), the last two for linear models.  They need
        batch_size=None, momentum=0, privacy=None, local_steps=1, overlap=False,
        compression=None; max_iter counts their iterations; gtol=None means
        ||g_t|| <= 1e-5 (scipy's pgtol).  "auto" (the default) takes gd when one of
        those options is set or a learning rate `lr` is given, newton-cholesky for a
        linear model of at most NEWTON_CHOLESKY_MAX_PARAMS parameters, else lbfgs
        (`solver_` tells which) -- so data and a loss alone get a solved model.
        See docs/distributed.md, "Solvers without a learning rate".
    lbfgs_memory : int >= 1, the (s, y) pairs L-BFGS keeps (10)
    lr : float > 0, "auto" or None -- gradient descent's rate; "auto" (and None with
        solver="gd") takes 1/L, L the Lipschitz constant of the
        full-batch gradient estimated by a few power-iteration kernel passes
        (`cyfed.distributed.step_size`); full-batch steps then backtrack (undo a step
        that raises the loss, reset momentum, halve the rate) so GD never diverges
    lr_schedule : name in `cyfed.schedules.SCHEDULES` or callable (lr, t, max_iter) -> lr_t
    max_iter : int >= 1, updates unless a tolerance stops earlier
    batch_size : int >= 1 or None (full batch), drawn globally without replacement
    fit_intercept : bool (linear models)
    l2 : float >= 0, (l2/2) ||coef||^2 (the intercept is not penalised)
    momentum : float in [0, 1);  nesterov : bool (PyTorch's SGD convention)
    tol : stop when the relative decrease of the loss falls below tol (or None)
    gtol : stop when ||g_t|| <= gtol (or None)
    standardize : bool -- train on features scaled to zero mean and unit variance over
        every rank's rows (scaled only without an intercept), folded into the
        coefficients so X is never copied; coef_/intercept_ come back in the raw
        units (`cyfed.standardize`).  The l2 penalty applies to the scaled model.
    seed : int, seeds the batch draws (and DP noise): generators seeded by (seed, t)
    n_threads : OpenMP threads per rank for the kernels (None: the cores this process
        may use divided by the ranks on its node, or OMP_NUM_THREADS when set --
        `cyfed.comm.thread_choice`; the choice is `n_threads_`)
    comm : Communicator or None -- None is `cyfed.comm.get_comm()`: MPI's world under
        mpiexec with more than one rank, else one process.  Pass
        `cyfed.comm.LocalComm()` to train an independent model on every rank.
    checkpoint : path or None;  checkpoint_every : int >= 1;  resume : bool
        Rank 0 writes the run's state atomically every checkpoint_every steps and at
        the end; resume=True continues from a checkpoint of the same config and
        data and ends bit-identical to the uninterrupted run.
    privacy : cyfed.privacy.DPSGD or None -- DP-SGD (Abadi et al. 2016): Poisson
        batches, per-example clipping to C in the kernel, N(0, (z C)^2) noise,

            g_t = (sum_{i in B_t} clip_C(g_i) + xi_t) / (q N) + l2 theta_t

        (batch_size must be None; epsilon is recorded per step).
    local_steps : int >= 1, H local steps between model averages (local SGD)
    overlap : bool, overlap each model average with the next round (CoCoD-SGD)
    compression : cyfed.compress compressor or None -- the gradient sums travel
        compressed (one Allgatherv of payloads; local_steps=1, no privacy)
    error_feedback : bool, keep what the compressor dropped for the next step

    Attributes
    ----------
    coef_ : (d,) or (d, k) float64;  intercept_ : float or (k,) (linear models)
    params_ : (n_params,) float64, the flat parameters (every model)
    model_ : the bound cyfed.models.Model
    solver_ : the solver that ran (solver="auto" resolved)
    n_iter_ : updates (local steps with H > 1) in the returned model
    history_ : list of dicts: 'iter', 'loss', 'grad_norm', 'lr', 'seconds',
        'bytes_sent', 'bytes_received' (and with privacy 'batch_size',
        'clipped_fraction', 'epsilon'; with lbfgs one record per iteration at its
        new point, 'lr' the accepted step length, and 'evaluations', the kernel
        passes so far); see docs/distributed.md
    noise_multiplier_, accountant_ : with privacy, z and the RDP accountant
    """

    def __init__(self, loss="squared", *, lr=None, max_iter=100, batch_size=None,
                 fit_intercept=True, l2=0.0, momentum=0.0, nesterov=False,
                 lr_schedule="constant", tol=None, gtol=None, seed=0, n_threads=None,
                 comm=None, checkpoint=None, checkpoint_every=10, resume=False,
                 privacy=None, local_steps=1, overlap=False, compression=None,
                 error_feedback=False, solver="auto", lbfgs_memory=10, standardize=False):
        self.solver, self.lbfgs_memory, self.standardize = solver, lbfgs_memory, standardize
        self.loss, self.lr, self.max_iter, self.batch_size = loss, lr, max_iter, batch_size
        self.fit_intercept, self.l2 = fit_intercept, l2
        self.momentum, self.nesterov, self.lr_schedule = momentum, nesterov, lr_schedule
        self.tol, self.gtol, self.seed, self.n_threads = tol, gtol, seed, n_threads
        self.comm = comm
        self.checkpoint, self.checkpoint_every, self.resume = checkpoint, checkpoint_every, resume
        self.privacy = privacy
        self.local_steps, self.overlap = local_steps, overlap
        self.compression, self.error_feedback = compression, error_feedback

    # -- checks ---------------------------------------------------------------

    def _check_params(self):
        """Validate the hyper-parameters; the lr schedule."""
        if not self.auto_lr:
            check.positive_float(self.lr, "lr (a float > 0, 'auto' or None)")
        check.int_at_least(self.max_iter, "max_iter", 1)
        check.optional_int_at_least(self.batch_size, "batch_size", 1)
        check.in_unit_interval(self.momentum, "momentum")
        check.boolean(self.nesterov, "nesterov")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        for name in ("tol", "gtol"):
            if getattr(self, name) is not None:
                check.nonnegative_float(getattr(self, name), name)
        check.nonnegative_float(self.l2, "l2")
        check.int_at_least(self.checkpoint_every, "checkpoint_every", 1)
        check.int_at_least(self.local_steps, "local_steps (H < 1 is not allowed)", 1)
        check.boolean(self.overlap, "overlap")
        check.boolean(self.fit_intercept, "fit_intercept")
        check.boolean(self.standardize, "standardize")
        if self.standardize and not isinstance(as_model(self.loss), LinearModel):
            raise ValueError("standardize=True needs a linear model (a loss name), got "
                             f"{type(self.loss).__name__}")
        if self.standardize and self.privacy is not None:
            raise ValueError("standardize=True does not combine with privacy: DP-SGD clips "
                             "per-example gradients of the raw features")
        if self.overlap and self.checkpoint is not None:
            raise ValueError("checkpoint is not supported with overlap=True (the ranks' "
                             "models differ between averages)")
        self._check_privacy()
        self._check_compression()
        self._check_solver()
        return get_schedule(self.lr_schedule)

    def _check_privacy(self):
        if self.privacy is None:
            return
        if self.local_steps > 1 or self.overlap:
            raise ValueError("privacy needs local_steps=1 and overlap=False: DP-SGD's "
                             "accounting assumes one noisy step per sampled batch")
        if not isinstance(self.privacy, DPSGD):
            raise TypeError(f"privacy must be a cyfed.privacy.DPSGD or None, got "
                            f"{type(self.privacy).__name__}")
        self.privacy.check()
        if self.batch_size is not None:
            raise ValueError("batch_size must be None with privacy: DP-SGD draws Poisson "
                             "batches of expected size privacy.sample_rate * n_samples")

    def _check_compression(self):
        check.compressor(self.compression, "compression")
        check.boolean(self.error_feedback, "error_feedback")
        if self.compression is None:
            if self.error_feedback:
                raise ValueError("error_feedback needs compression (a compressor)")
            return
        if self.privacy is not None:
            raise ValueError("compression does not combine with privacy: DP-SGD's noise is "
                             "calibrated to the exact sum of the clipped gradients")
        if self.local_steps > 1 or self.overlap:
            raise ValueError("compression needs local_steps=1 and overlap=False: it "
                             "compresses the per-step gradients, not model averages")
        if self.error_feedback:
            compress.ErrorFeedback(self.compression)        # refuses non-contractive ones

    @property
    def auto_lr(self):
        """Whether gradient descent estimates its rate (lr="auto" or None)."""
        return self.lr is None or (isinstance(self.lr, str) and self.lr == "auto")

    def _check_solver(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got "
                             f"{self.solver!r}")
        check.int_at_least(self.lbfgs_memory, "lbfgs_memory", 1)
        if self.solver in ("gd", "auto"):
            return
        for name, value in self._first_order_options():
            raise ValueError(f"solver={self.solver!r} needs {name}={FULL_BATCH[name]!r} (got "
                             f"{value!r}): it takes full-batch steps of its own length")
        if self.solver.startswith("newton") and not as_model(self.loss).second_order:
            raise ValueError(f"solver={self.solver!r} needs a linear model (a loss name); "
                             "use solver='lbfgs' for other models")

    def _first_order_options(self):
        """[(name, value)] of the options set that only gradient descent supports."""
        return [(name, getattr(self, name)) for name, needed in FULL_BATCH.items()
                if getattr(self, name) != needed]

    def _resolve_solver(self, model):
        """The solver that runs: `solver`, or for "auto" gd when an option needs it,
        exact Newton for few parameters, else L-BFGS (docs/distributed.md)."""
        if self.solver != "auto":
            return self.solver
        if self._first_order_options() or self.lr is not None:
            return "gd"
        if model.second_order and model.n_params <= NEWTON_CHOLESKY_MAX_PARAMS:
            return "newton-cholesky"
        return "lbfgs"

    # -- training -------------------------------------------------------------

    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None,
            callback=None):
        """Train on this rank's shard (X (n_local, d), y (n_local,)); collective.

        Every rank of the communicator must call fit; a rank may hold 0 rows.
        coef_init / intercept_init start a linear model there (coef_init: the flat
        parameters of another model).  `callback(record)` runs on every rank after
        each history record.
        """
        with training.single_threaded_blas():
            return self._fit(X, y, sample_weight, coef_init, intercept_init, callback)

    def _fit(self, X, y, sample_weight, coef_init, intercept_init, callback):
        run = self._setup(training.communicator(self.comm), X, y, sample_weight, callback)
        theta = on_every_rank(run.comm, lambda: run.model.start(coef_init, intercept_init))
        velocity = np.zeros(run.model.n_params)
        self.history_, self.n_iter_ = [], 0
        prev_loss, steps = None, range(0, self.max_iter)
        self.solver_ = self._resolve_solver(run.model)
        if self.solver_ in SECOND_ORDER:
            loop = SECOND_ORDER[self.solver_](self, run)
        else:
            loop = (SynchronousGD if self.local_steps == 1 and not self.overlap else LocalSGD)(
                self, run)
        if run.checkpoints is not None and self.resume:
            restored = self._restore(run)
            if restored is not None:
                theta, velocity, prev_loss, steps, state = restored
                if state is not None:
                    loop.load_state_dict(state)
        if self.solver_ == "gd" and loop.base_lr is None and len(steps):
            loop.start(theta, steps[0])
        prev_loss = loop.train(theta, velocity, prev_loss, steps)
        if run.checkpoints is not None:
            loop.save(theta, velocity, prev_loss, True)
        self._store(run.model, theta)
        if self.privacy is not None:
            self._account()
        return self

    def _setup(self, comm, X, y, sample_weight, callback):
        """Validate everything on every rank, agree on the data: the run state."""
        def check_local_input():
            schedule = self._check_params()
            model = as_model(self.loss, self.fit_intercept)
            data = model.prepare(X, y, sample_weight)
            threads = check.n_threads(self.n_threads, None)   # None: thread_choice below
            return schedule, model, data, threads, model.top_label(data)

        schedule, model, data, threads, top = on_every_rank(comm, check_local_input)
        threads = self.n_threads_ = thread_choice(comm, threads)["threads"]   # collective
        data, counts, model, _ = training.bind_data(comm, model, data, top)
        if self.standardize:
            model = Standardized(model, *feature_moments(comm, data.X, model.fit_intercept))
        n_global, offset = sum(counts), sum(counts[:comm.rank])
        if self.batch_size is not None and self.batch_size > n_global:
            raise ValueError(f"batch_size={self.batch_size} exceeds the {n_global} rows "
                             "held by all ranks together")
        if self.privacy is not None:
            self.noise_multiplier_ = self.privacy.noise_for(float(self.privacy.sample_rate),
                                                            self.max_iter)
            self.accountant_ = accountant.RDPAccountant()
        codec = None
        if self.compression is not None:
            codec = GradientCompression(comm, self.compression, self.error_feedback,
                                        self.seed, model.k, model.n_params)
        checkpoints = None
        if self.checkpoint is not None:
            mine = {comm.rank: checkpoint.digest(data.X, data.y, data.sample_weight)}
            checkpoints = training.Checkpoints(
                self.checkpoint, self.config(), training.data_digest(comm, mine),
                "other data (or another sharding over ranks)")
        return GDRun(comm=comm, model=model, data=data, threads=threads, callback=callback,
                     checkpoints=checkpoints, schedule=schedule, n_global=n_global,
                     offset=offset, codec=codec)

    def config(self):
        """What determines the result (threads, ranks and paths do not): JSON-able."""
        names = ("lr", "max_iter", "batch_size", "fit_intercept", "l2", "momentum",
                 "nesterov", "lr_schedule", "tol", "gtol", "seed", "local_steps",
                 "error_feedback")
        if self.solver != "gd":   # gd's fingerprint (and its old checkpoints) unchanged
            names += ("solver", "lbfgs_memory")
        if self.standardize:
            names += ("standardize",)
        return {"model": training.describe(as_model(self.loss, self.fit_intercept)),
                **{n: getattr(self, n) for n in names},
                "privacy": training.describe(self.privacy),
                "compression": repr(self.compression)}     # repr names every hyper-parameter

    def _restore(self, run):
        """(theta, velocity, prev_loss, steps left, the loop's state or None) from the
        checkpoint, or None."""
        loaded = run.checkpoints.restore(run.comm)
        if loaded is None:
            return None
        arrays, meta = loaded
        self.history_ = list(meta["history"])
        self.n_iter_ = int(meta["iteration"])
        if self.privacy is not None:
            self.accountant_.load_state_dict(meta["accountant"])
        if run.codec is not None:
            run.codec.load_state_dict(arrays["compression"])
        steps = range(self.n_iter_, self.n_iter_ if meta["done"] else self.max_iter)
        return (np.array(arrays["theta"]), np.array(arrays["velocity"]), meta["prev_loss"],
                steps, arrays.get("loop"))

    def _account(self):
        """Bring accountant_ up to the n_iter_ steps taken (with privacy)."""
        if self.accountant_.steps < self.n_iter_:
            self.accountant_.step(self.noise_multiplier_, self.privacy.sample_rate,
                                  steps=self.n_iter_ - self.accountant_.steps)

    def _store(self, model, theta):
        if isinstance(model, Standardized):         # report the model in raw units
            model, theta = model.inner, model.raw(theta)
        self.model_, self._params = model, np.array(theta, dtype=np.float64)
        if isinstance(model, LinearModel):
            self.coef_, self.intercept_ = model.split(self._params)

    @property
    def params_(self):
        """The flat parameters (of a linear model: from coef_ and intercept_)."""
        if isinstance(self.model_, LinearModel):
            return self.model_.start(self.coef_, self.intercept_)
        return self._params

    # -- inference ------------------------------------------------------------

    def predict(self, X):
        """Predicted targets (squared) or labels (logistic, softmax) for local rows."""
        return self.model_.predict(X, self.params_,
                                   n_threads=getattr(self, "n_threads_", self.n_threads))

    def score(self, X, y):
        """R^2 (real targets) or accuracy (labels) over all ranks' rows; collective."""
        comm = self.comm if self.comm is not None else get_comm()

        def local_predictions():
            Xc = (check.csr if check.is_sparse(X) else check.matrix)(X, "X", allow_empty=True)
            yc = check.vector(y, "y", Xc.shape[0], np.float64)
            pred = self.predict(Xc).astype(np.float64) if Xc.shape[0] else np.empty(0)
            return yc, pred

        yc, pred = on_every_rank(comm, local_predictions)
        if self.model_.targets == "real":
            # two passes (global mean first): no cancellation for targets with a large offset
            first = comm.allreduce_sum(np.array([yc.size, yc.sum()], dtype=np.float64))
            mean = first[1] / first[0]
            second = comm.allreduce_sum(np.array([np.sum((yc - pred) ** 2),
                                                  np.sum((yc - mean) ** 2)]))
            return r2_score(second[0], second[1])
        stats = comm.allreduce_sum(np.array([np.sum(pred == yc), yc.size], dtype=np.float64))
        return float(stats[0] / stats[1])

