"""Robustness table: final test accuracy per aggregator x attack x share of malicious clients.

    python benchmarks/robustness.py                       # both datasets, full table (~2 min)
    python benchmarks/robustness.py --rounds 2 --datasets synthetic   # smoke run

Datasets (softmax regression, 30 clients, all of them in every round):

* ``synthetic``: FedProx's Synthetic(1,1), 30 devices, 20 % of each held out;
* ``digits``: scikit-learn's ``load_digits`` (pixels / 16), 20 % held out
  (stratified), the rest split over 30 clients by Dirichlet(0.5) label skew.

Malicious clients (10 %, 20 %, 30 % of 30: f = 3, 6, 9, drawn once per share)
run the attacks of ``cyfed.attacks``; Krum, Multi-Krum and Bulyan are told f
(Bulyan needs 30 >= 4f + 3, so it runs at 10 % and 20 % only: "n/a" otherwise).
Every run: ``rounds`` rounds, E = 1 local epoch, batch 10, lr 0.05, seed 0.
Prints one markdown table per dataset: rows attack and share, columns aggregators.
"""
import argparse
import time
import warnings

import numpy as np

from cyfed import attacks, strategies
from cyfed.federated import FederatedTrainer
from fl_datasets import DATASETS, N_CLIENTS

SHARES = (0.1, 0.2, 0.3)


def aggregators(f):
    """Name -> strategy (or None where the rule cannot run with f of 30 malicious)."""
    return {
        "FedAvg": strategies.FedAvg(),
        "Median": strategies.FedMedian(),
        "TrimmedAvg 0.2": strategies.FedTrimmedAvg(0.2),
        "Krum": strategies.Krum(f),
        "MultiKrum": strategies.MultiKrum(f),
        "Bulyan": strategies.Bulyan(f) if N_CLIENTS >= 4 * f + 3 else None,
        "GeoMed": strategies.GeometricMedian(),
        "CClip 1.0": strategies.CenteredClipping(1.0, iterations=3),
    }


def attack_list(bad):
    return {
        "none": None,
        "sign flip x4": attacks.SignFlip(bad, 4.0),
        "Gaussian 1.0": attacks.GaussianNoise(bad, 1.0),
        "scaling x10": attacks.Scaling(bad, 10.0),
        "label flip": attacks.LabelFlip(bad),
        "ALIE": attacks.ALittleIsEnough(bad),
        "IPM 0.5": attacks.InnerProduct(bad, 0.5),
    }


def accuracy(strategy, attack, train, test, rounds):
    trainer = FederatedTrainer(strategy, "softmax", rounds=rounds, local_epochs=1,
                               batch_size=10, lr=0.05, seed=0, attack=attack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # dropped NaN updates, named
        trainer.fit(train, test=test)
    return trainer.history_[-1]["test_accuracy"]


def table(name, rounds):
    train, test = DATASETS[name]()
    names = list(aggregators(0))
    print(f"\n{name}: final test accuracy after {rounds} rounds "
          f"({N_CLIENTS} clients, all per round)\n")
    print("| attack | malicious | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    rng = np.random.default_rng(0)
    draws = {share: sorted(rng.choice(N_CLIENTS, int(round(share * N_CLIENTS)),
                                      replace=False).tolist()) for share in SHARES}
    for attack_name in attack_list([]):
        for share in SHARES if attack_name != "none" else (0.0,):
            bad = draws.get(share, [])
            attack = attack_list(bad)[attack_name]
            cells = []
            for strategy in aggregators(len(bad)).values():
                cells.append("n/a" if strategy is None else
                             f"{accuracy(strategy, attack, train, test, rounds):.3f}")
            print(f"| {attack_name} | {share:.0%} | " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS),
                        default=list(DATASETS))
    args = parser.parse_args()
    start = time.perf_counter()
    for name in args.datasets:
        table(name, args.rounds)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
