"""Seconds per FedAvg round: cyfed beside a plain numpy FedAvg, same work, same run.

Workloads (softmax, 10 classes, lr 0.01):

* ``synthetic``: FedProx's Synthetic(1,1) with 1,000 devices, 100 clients per
  round, E = 5 local epochs, batch 10;
* ``tiny``: 10,000 clients x 20 rows (60 features), 1,000 clients per round,
  E = 1, batch 10.

The numpy side is the straightforward implementation: a Python loop over the
sampled clients, their epochs and their mini-batches, with numpy for each
batch's softmax gradient, then the weighted average.  Both sides train the same
clients on data of the same dtype (float64 and float32 are both run); threads =
cyfed's ``n_workers`` and numpy's BLAS threads.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest \\
        benchmarks/test_bench_federated.py --benchmark-json=fed.json -q
    python benchmarks/report_federated.py fed.json

The same run also times cyfed's round with client-level DP (``ClientDP``:
every update clipped, Gaussian noise added centrally or as every client's share,
adaptive clipping, epsilon accounted), reported as its overhead over the plain
cyfed round.
"""
import numpy as np
import pytest

from cyfed.data import make_fedprox_synthetic
from cyfed.federated import FederatedTrainer
from cyfed.privacy import ClientDP
from cyfed.strategies import FedAvg

LR = 0.01
WORKLOADS = {
    "synthetic": dict(clients=1000, per_round=100, epochs=5, batch=10),
    "tiny": dict(clients=10_000, per_round=1000, epochs=1, batch=10),
}
SMOKE_SCALE = 50          # smoke mode: clients and clients per round divided by this


def make_clients(name, n_clients, seed=0):
    if name == "synthetic":
        return make_fedprox_synthetic(1.0, 1.0, n_devices=n_clients, seed=seed)
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((20, 60)), rng.integers(0, 10, 20)) for _ in range(n_clients)]


@pytest.fixture(scope="module", params=[(w, dt) for w in WORKLOADS for dt in ("float64",
                                                                              "float32")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def workload(request, smoke):
    name, dtype = request.param
    spec = dict(WORKLOADS[name])
    if smoke:
        spec["clients"] //= SMOKE_SCALE
        spec["per_round"] = max(1, spec["per_round"] // SMOKE_SCALE)
    spec["name"] = f"{name}_{dtype}"
    spec["dtype"] = np.dtype(dtype)
    spec["data"] = [(X.astype(dtype), y) for X, y in make_clients(name, spec["clients"])]
    return spec


def numpy_fedavg_round(clients, sampled, W, b, epochs, batch, rng):
    """One FedAvg round the plain way: Python loops, numpy per mini-batch."""
    models, sizes = [], []
    for cid in sampled:
        X, y = clients[cid]
        w, c = W.copy(), b.copy()
        n = len(y)
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                rows = order[start:start + batch]
                Xb, yb = X[rows], y[rows]
                z = Xb @ w + c
                z -= z.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(rows)), yb] -= 1
                w -= (LR / len(rows)) * (Xb.T @ p)
                c -= LR * p.mean(axis=0)
        models.append(np.concatenate([w.ravel(), c]))
        sizes.append(n)
    theta = np.average(np.array(models), axis=0, weights=sizes).astype(W.dtype)
    return theta[:W.size].reshape(W.shape), theta[W.size:]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("privacy", [None, "central", "distributed"])
def test_cyfed_round(benchmark, timed, workload, threads, privacy):
    benchmark.group = f"fedavg-{workload['name']}-t{threads}"
    benchmark.extra_info["implementation"] = "cyfed" + (f"-dp-{privacy}" if privacy else "")
    dp = None if privacy is None else ClientDP(clip_norm=0.5, noise_multiplier=1.0,
                                               noise=privacy, adaptive=True, count_noise=5.0)
    trainer = FederatedTrainer(FedAvg(), "softmax", rounds=1,
                               clients_per_round=workload["per_round"],
                               local_epochs=workload["epochs"], batch_size=workload["batch"],
                               lr=LR, n_workers=threads, seed=1, privacy=dp)
    trainer.setup(workload["data"])
    # round 0 every time: the same sampled clients as the numpy side, so the same work
    timed(lambda n_threads=None: trainer.run_round(0), (), threads=threads)
    assert np.all(np.isfinite(trainer.theta_))


@pytest.mark.parametrize("threads", [1, 2])
def test_numpy_round(benchmark, timed, workload, threads):
    benchmark.group = f"fedavg-{workload['name']}-t{threads}"
    benchmark.extra_info["implementation"] = "numpy"
    clients = workload["data"]
    W, b = np.zeros((60, 10), workload["dtype"]), np.zeros(10, workload["dtype"])
    rng = np.random.default_rng(1)
    # cyfed's round-0 sample for seed 1
    sampled = np.sort(np.random.default_rng([1, 0]).choice(len(clients), workload["per_round"],
                                                           replace=False))

    def one_round(n_threads=None):
        return numpy_fedavg_round(clients, sampled, W, b, workload["epochs"],
                                  workload["batch"], rng)

    W2, b2 = timed(one_round, (), threads=threads)
    assert np.all(np.isfinite(W2))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("clients", [100, 1000])
@pytest.mark.parametrize("side", ["plain", "dp-central"])
def test_server_aggregation(benchmark, timed, smoke, clients, threads, side):
    """The server's part of a round alone: FedAvg's weighted mean of the clients'
    models beside DP-FedAvg's (clip every update, sum, noise, adaptive clip norm,
    epsilon), 60 x 10 softmax models (610 parameters)."""
    from cyfed import aggregate
    from cyfed.private_rounds import PrivateRounds
    clients = max(2, clients // SMOKE_SCALE) if smoke else clients
    benchmark.group = f"server-m{clients}-t{threads}"
    benchmark.extra_info["implementation"] = side
    rng = np.random.default_rng(0)
    theta = 0.1 * rng.standard_normal(610)
    models = theta + 0.01 * rng.standard_normal((clients, 610))
    n_samples = rng.integers(10, 100, clients).astype(float)
    ids = np.arange(clients)
    private = PrivateRounds(ClientDP(clip_norm=0.05, noise_multiplier=1.0, adaptive=True,
                                     count_noise=5.0), None, 1, 0.1, float(clients), 100,
                            threads)
    strategy = FedAvg()

    def plain(n_threads=None):
        return aggregate.weighted_mean(models, n_samples, n_threads=n_threads)

    def dp_central(n_threads=None):
        total, count = private.server_sum(models, theta, ids)
        return private.server_step(strategy, theta, total, count, 10 * clients, 0)[0]

    out = timed(plain if side == "plain" else dp_central, (), threads=threads)
    assert np.all(np.isfinite(out))
