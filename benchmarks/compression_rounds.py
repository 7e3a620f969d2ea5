"""Compressed uplinks in federated training: final loss beside bytes on the wire.

    python benchmarks/compression_rounds.py              # both datasets (~1 min)
    python benchmarks/compression_rounds.py --smoke      # CI: a few rounds

FedAvg on the two shared workloads (``fl_datasets``: Synthetic(1,1) and a
Dirichlet(0.5) split of digits, 30 clients, all of them every round, E = 1,
batch 10), every client's update sent through one compressor of
``cyfed.compress`` (with or without error feedback) in the same run as the
uncompressed baseline.  Columns: final training loss of the participants,
its change against the baseline, test accuracy, and the uplink bytes of the
whole run as counted from the buffers handed to ``Gatherv`` (payloads, the
per-client [id, n, loss, steps] record and the payload length), with the
reduction against the baseline's float64 updates.

Goals (issue 8): top-k 1 % with error feedback within 1 % of the baseline's
final loss with >= 20x fewer uplink bytes; 8-bit QSGD within 0.5 % with >= 7x.
"""
import argparse

from cyfed import compress
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg
from fl_datasets import DATASETS, N_CLIENTS

#: name -> (compressor factory, error feedback, goal (max loss change, min byte reduction))
CONFIGS = {
    "none (float64)": (None, False, None),
    "FP16": (compress.FP16, False, None),
    "QSGD 8-bit (s=127)": (lambda: compress.QSGD(127), False, (0.005, 7)),
    "QSGD 4-bit (s=7)": (lambda: compress.QSGD(7), False, None),
    "top-k 1%": (lambda: compress.TopK(0.01), False, None),
    "top-k 1% + EF": (lambda: compress.TopK(0.01), True, (0.01, 20)),
    "rand-k 10% (unbiased)": (lambda: compress.RandK(0.1), False, None),
    "rand-k 10% + EF": (lambda: compress.RandK(0.1, unbiased=False), True, None),
    "scaled sign + EF": (compress.ScaledSign, True, None),
    "PowerSGD rank 2 + EF": (lambda: compress.PowerSGD(2), True, None),
}


def run(clients, test, rounds, lr, make, error_feedback):
    trainer = FederatedTrainer(
        FedAvg(), "softmax", rounds=rounds, clients_per_round=N_CLIENTS, local_epochs=1,
        batch_size=10, lr=lr, seed=0, compression=make() if make else None,
        error_feedback=error_feedback).fit(clients, test=test)
    last = trainer.history_[-1]
    return (last["train_loss"], last["test_accuracy"],
            sum(r["bytes_up"] for r in trainer.history_))


def table(name, rounds, lr):
    clients, test = DATASETS[name]()
    print(f"\n{name}: {rounds} rounds, {N_CLIENTS} clients per round, lr {lr}\n")
    print("| uplink | final train loss | vs none | test accuracy | uplink MB | fewer bytes "
          "| goal |")
    print("|---|---:|---:|---:|---:|---:|---|")
    base = None
    for label, (make, ef, goal) in CONFIGS.items():
        loss, acc, nbytes = run(clients, test, rounds, lr, make, ef)
        base = base or (loss, nbytes)
        change, fewer = loss / base[0] - 1, base[1] / nbytes
        verdict = "—" if goal is None else (
            f"≤ {goal[0]:.1%}, ≥ {goal[1]}×: " + ("met" if change <= goal[0] and
                                                  fewer >= goal[1] else "missed"))
        print(f"| {label} | {loss:.4f} | {change:+.2%} | {acc:.3f} | {nbytes / 1e6:.2f} | "
              f"{fewer:.1f}× | {verdict} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="3 rounds (CI)")
    args = parser.parse_args()
    rounds = 3 if args.smoke else args.rounds
    for name, lr in (("synthetic", 0.01), ("digits", 0.05)):
        table(name, rounds, lr)


if __name__ == "__main__":
    main()
