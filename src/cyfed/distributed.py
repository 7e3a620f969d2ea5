"""Data-parallel gradient descent: one code path from one process to many MPI ranks.

Every rank holds a shard of the rows and calls ``fit`` with it (SPMD).  Each
iteration a rank computes the *sums* of its rows' weighted losses and
gradients in one fused kernel pass, one in-place Allreduce adds the buffer
``[grad_sums, loss_sum, weight_sum, error_flag]`` over the ranks, and every
rank applies the same update to the same parameters:

    g_t = (sum_r grad_sums_r) / (sum_r weight_sum_r) + l2 theta_t
    v_t = momentum v_{t-1} + g_t,  step = g_t + momentum v_t (Nesterov) or v_t
    theta_{t+1} = theta_t - lr_t step

Mini-batches are drawn from the *global* row index space with a generator
seeded by (seed, t), and each rank evaluates the drawn rows it owns, so the
trajectory does not depend on the number of ranks (only the order of the
floating-point sums does).  DP-SGD (``privacy=cyfed.privacy.DPSGD(...)``) keeps
this shape: Poisson batches of the global rows, per-example clipping inside the
kernel, and Gaussian noise drawn from a generator every rank seeds alike and
added after the Allreduce.

Local SGD (``local_steps=H > 1``) trades that per-step Allreduce for one model
average every H steps, and ``overlap=True`` hides the average behind the next
H local steps (see `DistributedGD`).  ``compression=`` replaces the Allreduce of
the gradient sums by an Allgatherv of compressed payloads (`GradientCompression`).
"""
import copy
import numbers
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cyfed import _validation as check
from cyfed import accountant
from cyfed import checkpoint
from cyfed import compress
from cyfed import gradients
from cyfed.comm import CountingComm, LocalComm
from cyfed.compressed_rounds import WIRE_DTYPE, Uplink
from cyfed.privacy import DPSGD
from cyfed.schedules import get_schedule


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""


# Labels above this are refused before any (d, k) array is allocated.
MAX_CLASSES = 1 << 20


def raise_if_any(comm, error):
    """Collective: if `error` is set on any rank, raise on every rank.

    The failing rank re-raises its own exception; the others raise ValueError
    naming the first failing rank and its message.  Every rank must call this
    at the same point, so that no rank is left waiting in a collective.
    """
    messages = comm.allgather_obj(None if error is None else f"{error}")
    if error is not None:
        raise error
    for rank, message in enumerate(messages):
        if message is not None:
            raise ValueError(f"rank {rank} rejected its input: {message}")


def on_every_rank(comm, fn, errors=(ValueError, TypeError)):
    """fn() on every rank; an exception of `errors` on any rank is raised on all of them."""
    try:
        return_value, error = fn(), None
    except errors as exc:
        return_value, error = None, exc
    raise_if_any(comm, error)
    return return_value


def local_labels_max(problem):
    """Largest softmax label of this shard (-1 if empty), after checking the labels."""
    if problem.n == 0:
        return -1
    y = problem.y
    if not (np.all(np.isfinite(y)) and np.all(y >= 0) and np.all(y == np.floor(y))):
        raise ValueError("y must hold integer class labels 0..k-1 for the softmax loss")
    top = int(y.max())
    if top >= MAX_CLASSES:
        raise ValueError(f"y has a class label {top}; labels must be below {MAX_CLASSES}")
    return top


def agree_on_data(comm, problem, top_label):
    """Collective: the ranks that hold rows must agree on (n_features, dtype).

    Returns (problem, row counts per rank, n_classes); a rank without rows gets
    an empty problem of the agreed width.  top_label is this rank's largest
    softmax label (-1 when it has none).
    """
    meta = comm.allgather_obj((problem.d, str(problem.dtype), problem.n, top_label))
    holders = [(r, m) for r, m in enumerate(meta) if m[2] > 0]
    if not holders:
        raise ValueError("no rank has any rows: the data are empty everywhere")
    if len({m[0] for _, m in holders}) > 1 or len({m[1] for _, m in holders}) > 1:
        raise ValueError("ranks disagree on the data: (n_features, dtype) per rank = "
                         + ", ".join(f"rank {r}: ({m[0]}, {m[1]})" for r, m in holders))
    d, dtype = holders[0][1][0], holders[0][1][1]
    if problem.n == 0:
        problem = gradients.prepare(problem.kind_name, np.empty((0, d), dtype=dtype),
                                    np.empty(0, dtype=dtype), allow_empty=True)
    k = (max(max(m[3] for m in meta) + 1, 2) if problem.kind == gradients.Kind.SOFTMAX
         else 1)
    return problem, [m[2] for m in meta], k


class GradientCompression:
    """The sum over ranks of each rank's gradient sums, through compressed payloads.

    Called in place of ``comm.allreduce_sum(buf)`` on `DistributedGD`'s buffer
    ``[gradient sums (width), loss sum, weight sum, clipped count, error flag]``:
    the gradient part of every rank goes through `cyfed.compressed_rounds.Uplink`
    (float32 on the wire, error feedback keyed by the rank, random draws seeded by
    (seed, t, stream, rank)), one Allgatherv carries every rank's payload to every
    rank, and each rank decodes them all and adds them in rank order, so every rank
    holds the same sum.  The scalars (and a flag for a gradient that could not be
    encoded, i.e. one that is not finite) go in an in-place Allreduce of 5
    float64s first: on a kernel error or a non-finite gradient anywhere, no payload
    is sent and `DistributedGD` raises on every rank (a non-finite gradient leaves
    NaN in the sum, which it reports as divergence).
    """

    def __init__(self, comm, compressor, error_feedback, seed, n_classes, width):
        self.comm, self.width = comm, width
        # a private copy: PowerSGD's warm start must not leak from one fit into the next
        compressor = copy.deepcopy(compressor)
        self.uplink = Uplink(compressor, error_feedback, seed, n_classes)
        shape = width
        if isinstance(compressor, compress.PowerSGD):
            shape = (width // n_classes, n_classes)
            if compressor.rank > min(shape):
                raise ValueError(f"PowerSGD rank must be <= {min(shape)} for a gradient "
                                 f"seen as a {shape[0]} x {shape[1]} matrix (rows: the "
                                 f"features and the intercept, columns: the classes), got "
                                 f"{compressor.rank}")
        # the same on every rank (the payload size depends only on the shape): no
        # exchange of the lengths before the Allgatherv
        self.counts = [compressor.max_payload_nbytes(shape, WIRE_DTYPE)] * comm.size

    def __call__(self, buf, t):
        comm, width = self.comm, self.width
        try:
            with np.errstate(over="ignore", invalid="ignore"):   # a diverging run: reported
                payload, _ = self.uplink.encode(buf[None, :width], [comm.rank], t)
        except ValueError:              # not finite (or out of FP16's range)
            payload = None
        scalars = comm.allreduce_sum(np.append(buf[width:], float(payload is None)))
        buf[width:] = scalars[:-1]
        if scalars[-1] > 0:
            buf[:width] = np.nan
        elif buf[-1] == 0:
            flat, counts = comm.allgatherv(payload, self.counts)
            buf[:width] = self.uplink.decode(flat, counts, width).sum(axis=0)
        return buf

    def state_dict(self):
        """This rank's error-feedback residual and compressor state, keyed by str(rank)."""
        return self.uplink.state_dict()

    def load_state_dict(self, states):
        """Restore this rank's entries of the merged `states` of all ranks."""
        self.uplink.load_state_dict(states, [self.comm.rank])


class DistributedGD:
    """Full-batch or mini-batch gradient descent on data sharded over ranks.

    Parameters
    ----------
    loss : {"squared", "logistic", "softmax"}
    lr : float > 0
        Base learning rate, shaped over iterations by `lr_schedule`.
    max_iter : int >= 1
        Number of updates unless a tolerance stops training earlier.
    batch_size : int or None
        Global mini-batch size drawn without replacement each iteration; None
        uses every row (full-batch gradient descent).
    fit_intercept : bool
    l2 : float >= 0
        L2 penalty (l2/2) ||coef||^2 (the intercept is not penalised).
    momentum : float in [0, 1); nesterov : bool
        Heavy-ball or Nesterov momentum (PyTorch's SGD convention).
    lr_schedule : str or callable
        A name of `cyfed.schedules.SCHEDULES` or a callable (lr, t, max_iter) -> lr_t.
    tol : float or None
        Stop when the relative decrease of the full-batch loss falls below tol.
    gtol : float or None
        Stop when the gradient norm falls below gtol.
    seed : int
        Seeds the mini-batch draws: generator seeded by (seed, t).
    n_threads : int or None
        OpenMP threads per rank for the kernels.
    comm : Communicator or None
        Defaults to `LocalComm()` (one process); pass `cyfed.comm.get_comm()`
        or an `MPIComm` to train over MPI ranks.
    checkpoint : path or None;  checkpoint_every : int;  resume : bool
        Rank 0 writes the model, momentum, iteration and history atomically every
        `checkpoint_every` iterations and at the end; with resume=True, fit()
        continues from an existing checkpoint of the same config and data (same
        shards: the data digest is per rank) and ends bit-identical.
    privacy : cyfed.privacy.DPSGD or None
        Example-level differential privacy by DP-SGD (Abadi et al. 2016,
        arXiv:1607.00133); batch_size must then be None.  With C = clip_norm,
        q = sample_rate, N the global row count and z the noise multiplier
        (given, or calibrated once before training so that epsilon after
        max_iter steps is <= target_epsilon), iteration t

        1. draws the batch B_t by Poisson sampling: every global row enters
           independently with probability q, from a generator seeded by (seed, t)
           (geometric gaps between the drawn rows: O(qN) work, and the same batch
           whatever the number of ranks; each rank takes the rows it holds);
        2. sums the examples' weighted gradients g_i = w_i dl_i/d(coef, intercept),
           each clipped to norm C in the kernel, clip_C(g) = g min(1, C / ||g||)
           (the norm over coef and intercept together), and Allreduces the sums;
        3. adds noise xi_t ~ N(0, (z C)^2 I) of size d k + k, drawn on every rank
           from a generator seeded by (seed, t, 1), so all ranks add the same draw:

               g_t = ( sum_{i in B_t} clip_C(g_i) + xi_t ) / (q N) + l2 theta_t,

           the denominator being the expected batch size q N (data-independent,
           so one example moves the sum by at most C); an empty batch steps on
           the noise alone.  With sample weights this estimates the gradient of
           (1/N) sum_i w_i l_i (the weighted mean when the weights average 1).

        Momentum, schedules, checkpoints and resume work as without privacy.  The
        recorded 'loss' is sum_{i in B_t} w_i l_i / (q N) + (l2/2) ||theta_t||^2, an
        unbiased but noisy estimate (and itself not privatised: it is for
        monitoring); a tol stopping rule compares these noisy values, so use a
        small tol or none.

    local_steps : int >= 1
        H, the number of local steps between model averages (local SGD, Stich
        2019, arXiv:1805.09767; Lin et al. 2020, arXiv:1808.07217).  H = 1
        (default, with overlap=False) is the synchronous algorithm above: one
        Allreduce of the gradient sums per step.  With H > 1 rank r keeps its own
        model theta_r and, for steps t = t0 .. t0 + H - 1 of a round, steps on its
        own shard only:

            g_{r,t} = (sum_{i in B_{r,t}} w_i grad l_i(theta_r)) / (sum_{i in B_{r,t}} w_i)
                      + l2 theta_r,

        with the same momentum rule and lr_t as above, then all ranks average with
        ONE in-place Allreduce of the state [p_r theta_r, p_r v_r] (the velocity
        only with momentum: it is averaged like the model), p_r = W_r / W, W_r the
        shard's total sample weight (its row count for unit weights) and W their
        sum, so that theta_bar = sum_r p_r theta_r and the averaged objective
        sum_r p_r f_r is the global one.  B_{r,t} is every row of the shard
        (batch_size=None) or the rank's part of the global mini-batch drawn for
        (seed, t) as above: its expected size batch_size n_r / N keeps each rank's
        work proportional to its rows, and the draw depends only on (seed, t) and
        the shard's position in the global row order.  A rank whose part is empty
        (or that holds no rows) skips the step.  The result necessarily depends on
        the sharding (each rank descends its own objective f_r between averages;
        H = 1 does not): it is reproducible for a given (seed, sharding), not
        across rank counts.  max_iter counts local steps; the last round is
        shortened to end at max_iter.  Communication falls by H: per round a
        rank hands MPI d k + k (+ d k + k with momentum) + 3 float64s, against
        d k + k + 4 per step for H = 1.  One history record per round (see
        Attributes); tol and gtol are checked there only; checkpoints are written
        at the first average at or after every checkpoint_every local steps.
        privacy needs H = 1: DP-SGD's accounting assumes one noisy step per batch.
    overlap : bool
        Overlap each model average with the next round's computation
        (CoCoD-SGD, Shen et al. 2019, arXiv:1906.12043; the same idea as
        Overlap-Local-SGD, Wang et al. 2020, arXiv:2002.09539).  At the end of
        round j a rank copies its state s_{r,j} = x_r, starts a non-blocking
        Allreduce of p_r s_{r,j} and goes on with round j + 1 from x_r (testing
        the request after every local step, so that MPI progresses it); at the end
        of round j + 1 it waits and applies its round's progress to the average:

            x_r <- sum_q p_q s_{q,j} + (x_r - s_{r,j}).

        The average is thus one round stale (rounds run on unaveraged models);
        the bytes are those of overlap=False, and the last round ends with a
        blocking average so every rank returns the same model.  Works for any H
        (H = 1 then averages models, not gradients).  No checkpoints with overlap
        (the ranks' models differ between averages).
    compression : cyfed.compress compressor or None
        Compress the gradients of synchronous GD (local_steps=1, overlap=False;
        not with privacy: DP-SGD's noise is calibrated to the exact clipped sum).
        Each step rank r computes its gradient sums g_{r,t} (d k + k values, the
        same kernel pass as without compression), rounds them to float32 (the
        wire format of `cyfed.compressed_rounds`) and sends the payload C(g_{r,t})
        to every rank with ONE Allgatherv (the approach of Deep Gradient
        Compression, Lin et al. 2018, arXiv:1712.01887, for top-k); every rank
        decodes all P payloads and adds them in rank order,

            g_t = (sum_{r=0}^{P-1} decode(C(g_{r,t}))) / (sum_r weight_sum_r) + l2 theta_t,

        so every rank holds the same g_t and applies the same update (momentum,
        schedules, tol and gtol as above).  The loss and weight sums and the error
        flags travel uncompressed in an in-place Allreduce of 5 float64s.  The
        payloads are gathered rather than reduced because most formats (top-k,
        random-k, QSGD, sign, PowerSGD) cannot be added without decoding, and for
        FP16/BF16 the MPI standard has no 16-bit float type to sum (MPICH >= 3.4
        and Open MPI 5 have MPIX_C_FLOAT16 as an extension; mpi-forum/mpi-issues
        #65), and summing in 16 bits would round every partial sum and overflow
        at 65504 for FP16; the Allgatherv
        also yields the same sum, bit for bit, on every rank.  Per step a rank
        therefore hands MPI 40 + s bytes to send and 40 + P s to receive, s the
        payload size (``compression.max_payload_nbytes(d k + k, numpy.float32)``;
        for PowerSGD the gradient is a (d + 1) x k matrix, rows the features and
        the intercept, so its rank must be <= min(d + 1, k): 1 for k = 1),
        against 8 (d k + k + 4) each way without compression.  Random compressors
        (QSGD, RandK, PowerSGD's first Q) draw from a generator seeded by
        (seed, t, 5, r).  A compressed sum depends on how the rows are split over
        the ranks (each rank compresses its own sum): results are reproducible for
        a given (seed, sharding), bit for bit, not across rank counts.  The
        compressor object is copied at fit, so its state never leaks between fits.
    error_feedback : bool
        Error feedback on each rank's gradient sums (Stich et al. 2018,
        arXiv:1809.07599; Karimireddy et al. 2019, arXiv:1901.09847): rank r keeps
        a float32 residual e_r (0 at the start) and sends

            p_{r,t} = g_{r,t} + e_{r,t},   C(p_{r,t}),   e_{r,t+1} = p_{r,t} - decode(C(p_{r,t})),

        so what a biased compressor (TopK, ScaledSign, PowerSGD) drops is delayed,
        not lost: sum_t decode(C(p_{r,t})) = sum_t g_{r,t} - e_{r,T}.  Needs
        compression, and a contractive compressor (RandK only with
        unbiased=False; see `cyfed.compress.ErrorFeedback`).  The residual acts as
        a delay, so error feedback may need a smaller lr than uncompressed GD, and
        with the ranks' shards differing (their local gradients do not vanish at
        the optimum) it reaches a neighbourhood of the optimum of size O(lr).
        Checkpoints hold every rank's residual (and PowerSGD's warm-start Q), each
        restored on its rank, so a resumed run ends bit-identical.

    Attributes
    ----------
    coef_ : (d,) or (d, k) float64;  intercept_ : float or (k,) float64
    n_iter_ : updates (local steps with H > 1) in the returned model
    history_ : list of dicts, one per Allreduce of gradients (H = 1) or of models
        (H > 1 or overlap), with 'iter', 'loss', 'grad_norm', 'lr', 'seconds',
        'bytes_sent' and 'bytes_received'.  H = 1: 'loss' at theta_t (before its
        update) and 'grad_norm' of g_t.  Local SGD: 'iter' = t0, the round's first
        step, 'loss' = sum_r loss sums / sum_r weight sums of the round's first
        local step (+ l2 term), i.e. the loss at the round's starting average
        (with overlap: the weighted mean of the ranks' losses at their own
        starting models), and 'grad_norm' = ||theta_bar_new - theta_bar_old|| /
        sum of the round's lr_t (the averaged "pseudo-gradient", which is ||g_t||
        for H = 1 without momentum and vanishes at a fixed point of the rounds);
        'lr' = lr_{t0}.  With privacy also 'batch_size' (|B_t|),
        'clipped_fraction' (the share of B_t whose gradient norm exceeded C; 0 for
        an empty batch) and 'epsilon' (after t + 1 steps, at privacy.delta;
        omitted when delta is None).  'bytes_sent' / 'bytes_received': this
        rank's bytes of the buffers handed to MPI for the record
        (`cyfed.comm.CountingComm`: an Allreduce of b bytes counts b each way, an
        Allgatherv the rank's payload sent and all P payloads received; 0 on one
        process); the one-time setup exchange of shapes is not counted.
    noise_multiplier_ : z used (with privacy);  accountant_ :
    `cyfed.accountant.RDPAccountant` holding the privacy spent over n_iter_ steps.
    """

    def __init__(self, loss="squared", *, lr=0.01, max_iter=100, batch_size=None,
                 fit_intercept=True, l2=0.0, momentum=0.0, nesterov=False,
                 lr_schedule="constant", tol=None, gtol=None, seed=0, n_threads=None,
                 comm=None, checkpoint=None, checkpoint_every=10, resume=False,
                 privacy=None, local_steps=1, overlap=False, compression=None,
                 error_feedback=False):
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
        if not (isinstance(self.lr, numbers.Real) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")
        if self.batch_size is not None and (
                not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {self.batch_size!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        for name in ("tol", "gtol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
        check.nonnegative_float(self.l2, "l2")
        if not isinstance(self.checkpoint_every, numbers.Integral) or self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be an int >= 1, got "
                             f"{self.checkpoint_every!r}")
        if (not isinstance(self.local_steps, numbers.Integral) or isinstance(self.local_steps, bool)
                or self.local_steps < 1):
            raise ValueError(f"local_steps must be an int >= 1 (H < 1 is not allowed), got "
                             f"{self.local_steps!r}")
        if not isinstance(self.overlap, (bool, np.bool_)):
            raise ValueError(f"overlap must be a bool, got {self.overlap!r}")
        if self.overlap and self.checkpoint is not None:
            raise ValueError("checkpoint is not supported with overlap=True (the ranks' "
                             "models differ between averages)")
        if self.privacy is not None:
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
        self._check_compression()
        return get_schedule(self.lr_schedule)

    def _check_compression(self):
        if self.compression is not None and not isinstance(self.compression,
                                                           compress.Compressor):
            raise TypeError(f"compression must be a cyfed.compress compressor (FP16(), "
                            f"TopK(k), ...) or None, got {type(self.compression).__name__}")
        if not isinstance(self.error_feedback, (bool, np.bool_)):
            raise TypeError(f"error_feedback must be a bool, got "
                            f"{type(self.error_feedback).__name__}")
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

    # -- training -------------------------------------------------------------

    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None,
            callback=None):
        """Train on this rank's shard (X (n_local, d), y (n_local,)); collective.

        Every rank of the communicator must call fit; a rank may hold 0 rows.
        `callback(record)` runs on every rank after each history record.
        """
        comm = CountingComm(self.comm if self.comm is not None else LocalComm())

        def check_local_input():
            schedule = self._check_params()
            problem = gradients.prepare(self.loss, X, y, sample_weight, allow_empty=True)
            threads = check.n_threads(self.n_threads, gradients._kernels.max_threads())
            top = local_labels_max(problem) if problem.kind == gradients.Kind.SOFTMAX else -1
            return schedule, problem, threads, top

        schedule, problem, threads, top = on_every_rank(comm, check_local_input)
        problem, counts, k = agree_on_data(comm, problem, top)
        n_global, offset = sum(counts), sum(counts[:comm.rank])
        if self.batch_size is not None and self.batch_size > n_global:
            raise ValueError(f"batch_size={self.batch_size} exceeds the {n_global} rows "
                             "held by all ranks together")
        coef, intercept = on_every_rank(
            comm, lambda: self._initial_model(problem.kind, problem.d, k, coef_init,
                                              intercept_init))
        velocity = np.zeros(problem.d * k + k)
        if self.privacy is not None:
            self.noise_multiplier_ = self.privacy.noise_for(float(self.privacy.sample_rate),
                                                            self.max_iter)
            self.accountant_ = accountant.RDPAccountant()
        self.history_ = []
        self.n_iter_ = 0
        prev_loss = None
        first, done = 0, False
        fingerprint = None
        codec = None
        if self.compression is not None:
            codec = GradientCompression(comm, self.compression, self.error_feedback,
                                        self.seed, k, problem.d * k + k)
        if self.checkpoint is not None:
            fingerprint = self._fingerprint(comm, problem)
            if self.resume:
                restored = self._restore(comm, fingerprint, codec)
                if restored is not None:
                    coef, intercept, velocity, prev_loss, first, done = restored
        run = SimpleNamespace(comm=comm, problem=problem, k=k, schedule=schedule,
                              threads=threads, n_global=n_global, offset=offset,
                              fingerprint=fingerprint, callback=callback, codec=codec,
                              start=time.perf_counter(), sent=0, received=0)
        train = self._train if self.local_steps == 1 and not self.overlap else self._train_local
        prev_loss = train(run, coef, intercept, velocity, prev_loss,
                          range(first, self.max_iter if not done else first))
        if self.checkpoint is not None:
            self._save(comm, fingerprint, coef, intercept, velocity, prev_loss, True, codec)
        self._store(coef, intercept, k)
        if self.privacy is not None:
            self._account()
        return self

    def _train(self, run, coef, intercept, velocity, prev_loss, steps):
        """Synchronous GD (one Allreduce of gradient sums per step) over the iterations
        `steps`, updating the model in place; returns the loss the next tol test uses."""
        comm, problem, k = run.comm, run.problem, run.k
        dk = problem.d * k
        buf = np.empty(dk + k + 4)          # [grad sums, loss, weight, n_clipped, error flag]
        dp = self.privacy
        if dp is not None:
            q, clip = float(dp.sample_rate), float(dp.clip_norm)
            z = self.noise_multiplier_
            epsilon_after = (accountant.EpsilonCurve(z, q, dp.delta) if dp.delta is not None
                             else None)
            expected_batch = q * run.n_global
        else:
            clip = None
        sum_ranks = run.codec if run.codec is not None else lambda b, t: comm.allreduce_sum(b)
        no_intercept = np.empty(0, dtype=problem.dtype)
        for t in steps:
            if dp is None:
                rows = self._local_batch(t, run.n_global, run.offset, problem.n)
            else:
                rows, batch_size = self._poisson_batch(t, q, run.n_global, run.offset,
                                                       problem.n)
            work_coef = coef.astype(problem.dtype, copy=False)
            work_b = intercept.astype(problem.dtype) if self.fit_intercept else no_intercept
            loss_sum, weight_sum, n_clipped, error = self._local_sums(
                problem, work_coef, work_b, rows, buf, run.threads, clip)
            buf[dk + k:] = loss_sum, weight_sum, n_clipped, 0.0 if error is None else 1.0
            sum_ranks(buf, t)
            if buf[-1] > 0:
                raise_if_any(comm, error)
            if dp is None:
                scale = buf[dk + k + 1]
                if not scale > 0:
                    raise ValueError("sample_weight sums to 0 over the rows of iteration "
                                     f"{t}: weights must have a positive sum")
            else:
                scale = expected_batch
                buf[:dk + k] += self._noise(t, z * clip, dk, k)
            with np.errstate(over="ignore", invalid="ignore"):   # divergence is checked below
                grad = buf[:dk + k] / scale
                grad[:dk] += self.l2 * coef.ravel()
                loss = buf[dk + k] / scale + 0.5 * self.l2 * float(coef.ravel() @ coef.ravel())
                grad_norm = float(np.linalg.norm(grad))
            lr_t = run.schedule(self.lr, t, self.max_iter)
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                self._diverged(run, coef, intercept, t, loss, lr_t)
            record = {"iter": t, "loss": float(loss), "grad_norm": grad_norm, "lr": float(lr_t)}
            if dp is not None:
                record["batch_size"] = batch_size
                record["clipped_fraction"] = (float(buf[dk + k + 2] / batch_size) if batch_size
                                              else 0.0)
                if epsilon_after is not None:
                    record["epsilon"] = epsilon_after(t + 1)
            if self._record(run, record, prev_loss):
                break
            prev_loss = loss
            self._step(grad, velocity, coef, intercept, lr_t)
            self.n_iter_ = t + 1
            if self.checkpoint is not None and (t + 1) % self.checkpoint_every == 0 \
                    and t + 1 < self.max_iter:
                self._save(comm, run.fingerprint, coef, intercept, velocity, prev_loss, False,
                           run.codec)
        return prev_loss

    def _train_local(self, run, coef, intercept, velocity, prev_loss, steps):
        """Local SGD over the local steps `steps`: rounds of local_steps, each ending in
        a model average (overlapped with the next round if self.overlap).  Updates the
        model in place; returns the loss the next tol test uses."""
        comm, problem, k = run.comm, run.problem, run.k
        dk, m = problem.d * k, problem.d * k + k
        weights = comm.allgather_obj(float(problem.sample_weight.sum())
                                     if len(problem.sample_weight) else float(problem.n))
        if not sum(weights) > 0:
            raise ValueError("sample_weight sums to 0 over all rows: weights must have a "
                             "positive sum")
        share = weights[comm.rank] / sum(weights)
        # [theta_r, v_r] in one vector, averaged by one Allreduce (v_r only with momentum)
        state = np.concatenate([coef.ravel(), intercept] + ([velocity] if self.momentum else []))
        avg = np.empty(state.size + 3)      # [share * state, loss sum, weight sum, error flag]
        anchor = state.copy()               # the last average: the same on every rank
        snapshot = np.empty_like(state)     # overlap: this rank's state in the average in flight
        pending, error, end = None, None, steps.stop
        for t0 in range(steps.start, end, self.local_steps):
            rounds = (t0, min(t0 + self.local_steps, end))
            lr_sum, loss0, weight0, error = self._local_round(
                run, state, range(*rounds), error, None if pending is None else pending[0])
            if pending is not None:
                comm.wait(pending[0])
                state -= snapshot           # this round's progress, on the new average
                state += avg[:-3]
                stop, loss = self._averaged(run, avg, anchor, pending[1], error, prev_loss)
                if stop:
                    state[:] = anchor
                    break
                prev_loss = loss
            avg[:-3] = share * state
            avg[-3:] = loss0, weight0, 0.0 if error is None else 1.0
            if self.overlap and rounds[1] < end:
                snapshot[:] = state
                pending = (comm.iallreduce_sum(avg), (*rounds, lr_sum))
                continue
            comm.allreduce_sum(avg)
            state[:] = avg[:-3]
            stop, loss = self._averaged(run, avg, anchor, (*rounds, lr_sum), error, prev_loss)
            if stop:
                break
            prev_loss = loss
            every = self.checkpoint_every
            if self.checkpoint is not None and rounds[1] // every > t0 // every \
                    and rounds[1] < self.max_iter:
                self._save(comm, run.fingerprint, state[:dk].reshape(coef.shape), state[dk:m],
                           state[m:] if self.momentum else velocity, prev_loss, False)
        coef[:] = state[:dk].reshape(coef.shape)
        intercept[:] = state[dk:m]
        if self.momentum:
            velocity[:] = state[m:]
        return prev_loss

    def _local_round(self, run, state, steps, error, pending):
        """Local steps `steps` on this rank's shard, updating state [theta_r, v_r] in
        place and testing the request `pending` (if any) after each step, until a
        kernel error: (sum of lr_t, loss sum + l2 term and weight sum of the first
        step, error or None)."""
        problem, k = run.problem, run.k
        dk, m = problem.d * k, problem.d * k + k
        coef, intercept, velocity = state[:dk].reshape(problem.d, k), state[dk:m], state[m:]
        sums = np.empty(m)
        no_intercept = np.empty(0, dtype=problem.dtype)
        lr_sum, loss0, weight0 = 0.0, 0.0, 0.0
        for t in steps:
            lr_t = run.schedule(self.lr, t, self.max_iter)
            lr_sum += lr_t
            if error is None and problem.n:
                rows = self._local_batch(t, run.n_global, run.offset, problem.n)
                work_b = intercept.astype(problem.dtype) if self.fit_intercept else no_intercept
                loss_sum, weight_sum, _, error = self._local_sums(
                    problem, coef.astype(problem.dtype, copy=False), work_b, rows, sums,
                    run.threads, None)
                with np.errstate(over="ignore", invalid="ignore"):   # checked at the average
                    if t == steps.start:
                        penalty = 0.5 * self.l2 * float(state[:dk] @ state[:dk])
                        loss0, weight0 = loss_sum + penalty * weight_sum, weight_sum
                    if error is None and weight_sum > 0:
                        grad = sums / weight_sum
                        grad[:dk] += self.l2 * state[:dk]
                        self._step(grad, velocity, coef, intercept, lr_t)
            if pending is not None:
                run.comm.test(pending)
        return lr_sum, loss0, weight0, error

    def _averaged(self, run, avg, anchor, rounds, error, prev_loss):
        """Book a completed model average: avg holds the sums over ranks of [p_r state_r,
        loss sum, weight sum, error flag] of the round (t0, t_end, sum of lr_t), and
        becomes the new anchor.  Returns (whether tol or gtol stops training, loss)."""
        t0, t_end, lr_sum = rounds
        if avg[-1] > 0:
            raise_if_any(run.comm, error)
        if not avg[-2] > 0:
            raise ValueError("sample_weight sums to 0 over the rows of iteration "
                             f"{t0}: weights must have a positive sum")
        dk, m = run.problem.d * run.k, run.problem.d * run.k + run.k
        with np.errstate(over="ignore", invalid="ignore"):
            loss = avg[-3] / avg[-2]
            grad_norm = float(np.linalg.norm(avg[:m] - anchor[:m])) / lr_sum
        lr_t = run.schedule(self.lr, t0, self.max_iter)
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            self._diverged(run, anchor[:dk].reshape(-1, run.k), anchor[dk:m], t0, loss, lr_t)
        anchor[:] = avg[:-3]
        self.n_iter_ = t_end
        record = {"iter": t0, "loss": float(loss), "grad_norm": grad_norm, "lr": float(lr_t)}
        return self._record(run, record, prev_loss), loss

    def _record(self, run, record, prev_loss):
        """Append `record` with the time and this rank's bytes since the last record,
        run the callback; whether tol or gtol stops training."""
        comm = run.comm
        record["seconds"] = time.perf_counter() - run.start
        record["bytes_sent"] = comm.bytes_sent - run.sent
        record["bytes_received"] = comm.bytes_received - run.received
        run.sent, run.received = comm.bytes_sent, comm.bytes_received
        self.history_.append(record)
        if run.callback is not None:
            run.callback(record)
        loss = record["loss"]
        return (self.gtol is not None and record["grad_norm"] <= self.gtol) or (
            self.tol is not None and prev_loss is not None
            and abs(prev_loss - loss) <= self.tol * max(abs(prev_loss), 1e-300))

    def _step(self, grad, velocity, coef, intercept, lr_t):
        """theta <- theta - lr_t step, step by the momentum rule (PyTorch's SGD)."""
        if self.momentum:
            velocity *= self.momentum
            velocity += grad
            step = grad + self.momentum * velocity if self.nesterov else velocity
        else:
            step = grad
        coef -= lr_t * step[:coef.size].reshape(coef.shape)
        if self.fit_intercept:
            intercept -= lr_t * step[coef.size:]

    def _diverged(self, run, coef, intercept, t, loss, lr_t):
        """Keep the last finite model, blame non-finite input if any rank has some, else
        raise DivergenceError (collective)."""
        self._store(coef, intercept, run.k)
        raise_if_any(run.comm, self._non_finite_input(run.problem))
        raise DivergenceError(
            f"training diverged at iteration {t}: the loss or gradient is not finite "
            f"(loss={loss}, lr={lr_t}); try a smaller learning rate. coef_/intercept_ hold "
            "the last finite model.")

    def _account(self):
        """Bring accountant_ up to the n_iter_ steps taken (with privacy)."""
        if self.accountant_.steps < self.n_iter_:
            self.accountant_.step(self.noise_multiplier_, self.privacy.sample_rate,
                                  steps=self.n_iter_ - self.accountant_.steps)

    # -- checkpoints ----------------------------------------------------------

    def _fingerprint(self, comm, problem):
        """Digests of what determines the result: the config, and every rank's shard."""
        names = ("loss", "lr", "max_iter", "batch_size", "fit_intercept", "l2", "momentum",
                 "nesterov", "lr_schedule", "tol", "gtol", "seed")
        config = {n: getattr(self, n) for n in names}
        if self.privacy is not None:    # only then: digests of runs without it stay as they were
            config["privacy"] = self.privacy.hyper_parameters()
        if self.local_steps != 1:
            config["local_steps"] = self.local_steps
        if self.compression is not None:
            config["compression"] = repr(self.compression)      # names every hyper-parameter
            config["error_feedback"] = bool(self.error_feedback)
        config = checkpoint.digest(config)
        mine = checkpoint.digest(problem.X, problem.y, problem.sample_weight)
        return config, checkpoint.digest(comm.allgather_obj(mine))

    def _save(self, comm, fingerprint, coef, intercept, velocity, prev_loss, done,
              codec=None):
        arrays = {"coef": coef, "intercept": intercept, "velocity": velocity}
        if codec is not None:           # every rank's residual and compressor state
            states = comm.gather_obj(codec.state_dict())
            if comm.rank == 0:
                arrays["compression"] = {part: {key: value for state in states
                                                for key, value in state[part].items()}
                                         for part in states[0]}
        if comm.rank == 0:
            meta = {"iteration": self.n_iter_, "done": done, "prev_loss": prev_loss,
                    "history": self.history_, "config": fingerprint[0], "data": fingerprint[1]}
            if self.privacy is not None:
                self._account()
                meta["accountant"] = self.accountant_.state_dict()
            checkpoint.save(self.checkpoint, arrays, meta)

    def _restore(self, comm, fingerprint, codec=None):
        """(coef, intercept, velocity, prev_loss, next iteration, done) or None."""
        found = comm.bcast_obj(Path(self.checkpoint).exists() if comm.rank == 0 else None)
        if not found:
            return None
        arrays, meta = comm.bcast_obj(checkpoint.load(self.checkpoint) if comm.rank == 0
                                      else None)
        if meta["config"] != fingerprint[0]:
            raise ValueError(f"checkpoint {self.checkpoint} was written with another "
                             "configuration; refusing to resume from it")
        if meta["data"] != fingerprint[1]:
            raise ValueError(f"checkpoint {self.checkpoint} was written for other data (or "
                             "another sharding over ranks); refusing to resume from it")
        self.history_ = list(meta["history"])
        self.n_iter_ = int(meta["iteration"])
        if self.privacy is not None:
            self.accountant_.load_state_dict(meta["accountant"])
        if codec is not None:
            codec.load_state_dict(arrays["compression"])
        return (np.array(arrays["coef"]), np.array(arrays["intercept"]),
                np.array(arrays["velocity"]), meta["prev_loss"], self.n_iter_, meta["done"])

    @staticmethod
    def _initial_model(kind, d, k, coef_init, intercept_init):
        """(coef (d, k), intercept (k,)) in float64: zeros, or the given start."""
        coef = np.zeros((d, k))
        if coef_init is not None:
            if np.shape(coef_init) != ((d, k) if k > 1 else (d,)):
                raise ValueError(f"coef_init must have shape {(d, k) if k > 1 else (d,)}, "
                                 f"got {np.shape(coef_init)}")
            coef = np.array(gradients.coef_2d(coef_init, kind, d, np.float64), dtype=np.float64)
        intercept = np.zeros(k)
        if intercept_init is not None:
            intercept = gradients.intercept_1d(intercept_init, k, np.float64).copy()
        return coef, intercept

    @staticmethod
    def _non_finite_input(problem):
        """A ValueError naming this shard's NaN/Inf input, or None if it is all finite."""
        if problem.n == 0:
            return None
        try:
            problem.raise_non_finite("loss")
        except ValueError as exc:
            return exc
        except FloatingPointError:
            return None
        return None

    def _local_batch(self, t, n_global, offset, n_local):
        """This rank's rows of iteration t's global mini-batch (None: all rows)."""
        if self.batch_size is None:
            return None
        rng = np.random.default_rng([self.seed, t])
        batch = rng.choice(n_global, size=self.batch_size, replace=False)
        mine = batch[(batch >= offset) & (batch < offset + n_local)] - offset
        return np.sort(mine).astype(np.intp)

    def _poisson_batch(self, t, q, n_global, offset, n_local):
        """(this rank's rows of iteration t's Poisson batch, the global batch size).

        Every global row is in the batch independently with probability q: the gaps
        between consecutive drawn rows are Geometric(q), so drawing them costs O(qN)
        and every rank draws the same positions from (seed, t); the chunk size
        depends only on (q, N), so the draw is independent of the rank count too.
        """
        rng = np.random.default_rng([self.seed, t])
        mean = q * n_global
        chunk = int(mean + 4 * np.sqrt(mean) + 16)   # a second chunk is rarely needed
        parts, last = [], -1
        while last < n_global:
            positions = last + np.cumsum(rng.geometric(q, size=chunk))
            parts.append(positions)
            last = positions[-1]
        batch = np.concatenate(parts)
        size = int(np.searchsorted(batch, n_global))
        lo, hi = np.searchsorted(batch[:size], [offset, offset + n_local])
        return (batch[lo:hi] - offset).astype(np.intp), size

    def _noise(self, t, std, dk, k):
        """DP-SGD's N(0, std^2) noise of iteration t: the same draw on every rank."""
        noise = np.random.default_rng([self.seed, t, 1]).normal(0.0, std, size=dk + k)
        if not self.fit_intercept:
            noise[dk:] = 0          # the intercept is not trained: no gradient to privatise
        return noise

    @staticmethod
    def _local_sums(problem, coef, intercept, rows, buf, threads, clip_norm):
        """Kernel sums of this rank's rows into buf, each example's gradient clipped to
        clip_norm unless it is None: (loss_sum, weight_sum, n_clipped, error or None)."""
        out = buf[:coef.size + coef.shape[1]]
        if problem.n == 0:
            out[:] = 0
            return 0.0, 0.0, 0, None
        try:
            if clip_norm is None:
                return (*problem.sums(coef, intercept, rows, out, threads), 0, None)
            return (*problem.clipped_sums(coef, intercept, rows, out, threads, clip_norm), None)
        except ValueError as exc:
            out[:] = 0
            return 0.0, 0.0, 0, exc

    def _store(self, coef, intercept, k):
        self.coef_ = coef[:, 0].copy() if k == 1 else coef.copy()
        if not self.fit_intercept:
            self.intercept_ = 0.0 if k == 1 else np.zeros(k)
        else:
            self.intercept_ = float(intercept[0]) if k == 1 else intercept.copy()

    # -- inference ------------------------------------------------------------

    def predict(self, X):
        """Predicted targets (squared) or labels (logistic, softmax) for local rows."""
        return gradients.predict(self.loss, X, self.coef_, self.intercept_,
                                 n_threads=self.n_threads)

    def score(self, X, y):
        """R^2 (squared) or accuracy (classification) over all ranks' rows; collective."""
        comm = self.comm if self.comm is not None else LocalComm()

        def local_predictions():
            Xc = check.matrix(X, "X", allow_empty=True)
            yc = check.vector(y, "y", Xc.shape[0], np.float64)
            pred = self.predict(Xc).astype(np.float64) if Xc.shape[0] else np.empty(0)
            return yc, pred

        yc, pred = on_every_rank(comm, local_predictions)
        if self.loss == "squared":
            # two passes (global mean first): no cancellation for targets with a large offset
            first = comm.allreduce_sum(np.array([yc.size, yc.sum()], dtype=np.float64))
            mean = first[1] / first[0]
            second = comm.allreduce_sum(np.array([np.sum((yc - pred) ** 2),
                                                  np.sum((yc - mean) ** 2)]))
            return float(1 - second[0] / second[1]) if second[1] > 0 else 0.0
        stats = comm.allreduce_sum(np.array([np.sum(pred == yc), yc.size], dtype=np.float64))
        return float(stats[0] / stats[1])
