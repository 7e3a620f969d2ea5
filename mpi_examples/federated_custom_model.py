"""Bring your own model: a numpy MLP trained with DP-FedAvg and secure aggregation.

    mpiexec -n 3 python federated_custom_model.py [--rounds 8]
    python federated_custom_model.py              (one process: the same digest)

A one-hidden-layer MLP (tanh hidden layer, softmax output) written in plain
numpy as `loss_grad(theta, X, y)`, `predict(theta, X)` and `init(n_params)`
over one flat float64 vector theta = [W1 (d, h), b1 (h,), W2 (h, k), b2 (k,)]
(row-major), handed to the federated engine as a `cyfed.models.CallableModel`.

Data: 11,000 rows of 8 Gaussian features labelled 0..2 by a random two-layer
teacher network (not linearly separable); 10,000 of them split over 100
clients with a Dirichlet(0.5) label skew (non-IID), 1,000 held out.  Every
round 30 clients run 2 local epochs of SGD (batches of 20 rows); each clips its
update to norm S = 1 and adds its share of the Gaussian noise (z = 1, client-level
DP with distributed noise), quantises and masks it (SecAgg+), so rank 0 only
learns the noisy sum.  Rank 0 prints the test accuracy and epsilon after every round, and
the SHA-256 of the final parameters: every client's update depends only on
(seed, round, client id) and the masked sum is exact modular arithmetic, so the
digest is the same for any number of ranks.
"""
import argparse
import hashlib

import numpy as np

from cyfed.comm import get_comm
from cyfed.data import dirichlet
from cyfed.federated import FederatedTrainer
from cyfed.models import CallableModel
from cyfed.privacy import ClientDP
from cyfed.secagg import SecureAggregation
from cyfed.strategies import FedAvg


def mlp(d, hidden, k, *, seed=0):
    """A CallableModel: d -> tanh(hidden) -> softmax(k), mean cross-entropy."""
    shapes = [(d, hidden), (hidden,), (hidden, k), (k,)]
    sizes = [int(np.prod(s)) for s in shapes]
    n_params = sum(sizes)

    def unpack(theta):
        parts = np.split(np.asarray(theta, dtype=np.float64), np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes)]

    def forward(theta, X):
        W1, b1, W2, b2 = unpack(theta)
        H = np.tanh(np.asarray(X, dtype=np.float64) @ W1 + b1)
        Z = H @ W2 + b2
        return H, Z - Z.max(axis=1, keepdims=True)      # stable softmax: shift the logits

    def loss_grad(theta, X, y):
        X = np.asarray(X, dtype=np.float64)
        W1, b1, W2, b2 = unpack(theta)
        H, Z = forward(theta, X)
        log_p = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
        n, rows, labels = len(y), np.arange(len(y)), np.asarray(y).astype(np.intp)
        loss = -log_p[rows, labels].mean()
        dZ = np.exp(log_p)                              # softmax - onehot, over n
        dZ[rows, labels] -= 1.0
        dZ /= n
        dH = (dZ @ W2.T) * (1.0 - H * H)                # tanh' = 1 - tanh^2
        grad = np.concatenate([(X.T @ dH).ravel(), dH.sum(axis=0),
                               (H.T @ dZ).ravel(), dZ.sum(axis=0)])
        return loss, grad

    def predict(theta, X):
        return forward(theta, X)[1].argmax(axis=1)

    def init(n):
        """Glorot-uniform weights, zero biases; seeded, so every rank draws the same."""
        rng = np.random.default_rng(seed)
        parts = []
        for s in shapes:
            if len(s) == 2:
                limit = np.sqrt(6.0 / (s[0] + s[1]))
                parts.append(rng.uniform(-limit, limit, s).ravel())
            else:
                parts.append(np.zeros(s))
        return np.concatenate(parts)

    return CallableModel(loss_grad, n_params, predict=predict, init=init, targets="classes")


def teacher_data(n, d, k, *, seed=0):
    """Gaussian rows labelled by the argmax of a random tanh network."""
    rng = np.random.default_rng(seed)
    U1, U2 = rng.standard_normal((d, 6)), rng.standard_normal((6, k))
    X = rng.standard_normal((n, d))
    return X, np.argmax(np.tanh(X @ U1) @ U2, axis=1).astype(np.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    comm = get_comm()
    d, hidden, k, n_clients, n_train = 8, 16, 3, 100, 10_000
    X, y = teacher_data(n_train + 1000, d, k, seed=0)
    test = (X[n_train:], y[n_train:])
    parts = dirichlet(y[:n_train].astype(int), n_clients, 0.5, min_size=10, seed=0)
    clients = [(X[p], y[p]) for p in parts]
    model = mlp(d, hidden, k, seed=0)
    trainer = FederatedTrainer(
        FedAvg(), loss=model, rounds=args.rounds, clients_per_round=30, local_epochs=2,
        batch_size=20, lr=0.2, seed=0, comm=comm,
        privacy=ClientDP(clip_norm=1.0, noise_multiplier=1.0, noise="distributed", delta=1e-5),
        secure_aggregation=SecureAggregation(clip_range=4.0, neighbours="log"),
    ).fit(clients, test=test)
    if comm.rank == 0:
        print(f"numpy MLP {d}-{hidden}-{k} ({model.n_params} parameters), {n_clients} "
              f"Dirichlet(0.5) clients over {comm.size} rank(s); DP-FedAvg + SecAgg+")
        print(f"{'round':>5s} {'clients':>7s} {'train loss':>10s} {'test loss':>9s} "
              f"{'test acc':>8s} {'epsilon':>8s}")
        for r in trainer.history_:
            print(f"{r['round']:5d} {r['secagg_clients']:7d} {r['train_loss']:10.4f} "
                  f"{r['test_loss']:9.4f} {r['test_accuracy']:8.3f} {r['epsilon']:8.3f}")
        digest = hashlib.sha256(np.ascontiguousarray(trainer.theta_).tobytes()).hexdigest()
        print(f"final: test accuracy {trainer.history_[-1]['test_accuracy']:.3f}, "
              f"({trainer.history_[-1]['epsilon']:.2f}, 1e-5)-DP, theta sha256 {digest}")


if __name__ == "__main__":
    main()
