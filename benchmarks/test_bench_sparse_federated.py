"""Seconds per FedAvg round on sparse (CSR) clients: cyfed beside numpy/scipy, same run.

Workload (Sent140-like, `cyfed.data.make_bag_of_words`): 1,000 clients of
power-law sizes (50 rows on average), a 10,000-token vocabulary, 20 tokens per
row; logistic loss, 100 clients per round, E = 5 local epochs, batch 10, lr 0.5;
float64 and float32; one thread on both sides.

The numpy/scipy side is the straightforward implementation: a Python loop over
the sampled clients, their epochs and their mini-batches, each batch
X_b = X[rows] (scipy CSR), z = X_b @ w + b, r = sigmoid(z) - y, w -= lr/m X_b^T r
(dense w), then the weighted average.  It takes cyfed's sample and shuffles
(`cyfed._sgd.shuffled`), so both sides do the same work and reach the same model
(checked by `test_reference_is_the_same_round`, in smoke mode too).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src python -m pytest \\
        benchmarks/test_bench_sparse_federated.py --benchmark-json=sparse_fed.json -q
"""
import numpy as np
import pytest
from scipy import sparse

from cyfed import _sgd
from cyfed.data import make_bag_of_words
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg

LR, SEED = 0.5, 1
WORKLOAD = dict(clients=1000, per_round=100, epochs=5, batch=10, vocabulary=10_000,
                tokens_per_row=20)
SMOKE_SCALE = 50          # smoke mode: clients and clients per round divided by this


@pytest.fixture(scope="module", params=["float64", "float32"])
def workload(request, smoke):
    spec = dict(WORKLOAD, dtype=np.dtype(request.param))
    if smoke:
        spec["clients"] //= SMOKE_SCALE
        spec["per_round"] = max(1, spec["per_round"] // SMOKE_SCALE)
    spec["data"] = make_bag_of_words(spec["clients"], spec["vocabulary"],
                                     spec["tokens_per_row"], dtype=spec["dtype"])
    # cyfed's round-0 sample for SEED (cyfed.federated.stages.Sample)
    spec["sampled"] = np.sort(np.random.default_rng([SEED, 0]).choice(
        spec["clients"], spec["per_round"], replace=False))
    return spec


def trainer_for(workload):
    trainer = FederatedTrainer(FedAvg(), "logistic", rounds=1,
                               clients_per_round=workload["per_round"],
                               local_epochs=workload["epochs"], batch_size=workload["batch"],
                               lr=LR, n_workers=1, seed=SEED)
    return trainer.setup(workload["data"])


def scipy_fedavg_round(clients, sampled, w0, b0, epochs, batch):
    """One FedAvg round the plain way: Python loops, scipy CSR per mini-batch."""
    models, sizes = [], []
    for cid in sampled:
        X, y = clients[cid]
        w, b = w0.copy(), b0
        for e in range(epochs):
            order = _sgd.shuffled(len(y), SEED, 0, int(cid), e)
            for start in range(0, len(y), batch):
                rows = order[start:start + batch]
                Xb = X[rows]
                r = 1 / (1 + np.exp(-(Xb @ w + b))) - y[rows]
                w -= (LR / len(rows)) * (Xb.T @ r)
                b -= LR * r.mean()
        models.append(np.append(w, b))
        sizes.append(len(y))
    return np.average(np.array(models), axis=0, weights=sizes)


def test_cyfed_round(benchmark, timed, workload):
    benchmark.group = f"fedavg-bag-of-words-{workload['dtype']}-t1"
    benchmark.extra_info["implementation"] = "cyfed"
    trainer = trainer_for(workload)
    # round 0 every time: the same sampled clients as the scipy side, so the same work
    timed(lambda n_threads=None: trainer.run_round(0), (), threads=1)
    assert np.all(np.isfinite(trainer.theta_))


def test_scipy_round(benchmark, timed, workload):
    benchmark.group = f"fedavg-bag-of-words-{workload['dtype']}-t1"
    benchmark.extra_info["implementation"] = "numpy"
    w0, dtype = np.zeros(workload["vocabulary"], workload["dtype"]), workload["dtype"]

    def one_round(n_threads=None):
        return scipy_fedavg_round(workload["data"], workload["sampled"], w0, dtype.type(0),
                                  workload["epochs"], workload["batch"])

    assert np.all(np.isfinite(timed(one_round, (), threads=1)))


def test_reference_is_the_same_round(workload):
    """Both sides train the same clients on the same batches: the same model."""
    trainer = trainer_for(workload)
    trainer.run_round(0)
    np.testing.assert_array_equal(trainer.history_[0]["clients"], len(workload["sampled"]))
    ref = scipy_fedavg_round(workload["data"], workload["sampled"],
                             np.zeros(workload["vocabulary"]), 0.0, workload["epochs"],
                             workload["batch"])
    rtol = 1e-9 if workload["dtype"] == np.float64 else 1e-3
    np.testing.assert_allclose(trainer.theta_, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    assert sparse.issparse(workload["data"][0][0])
