"""Time-to-accuracy under lognormal client delays: FedAvg vs FedAsync vs FedBuff.

    python benchmarks/async_time_to_accuracy.py            # both datasets (< 2 min)
    python benchmarks/async_time_to_accuracy.py --smoke    # CI: a few seconds

Simulated mode of `cyfed.asynchronous.AsyncTrainer` (virtual clock, bit-reproducible):
30 clients, each with a speed drawn from the seed (log-delay ~ N(0, 1)) and each
job a lognormal duration around it (jitter 0.5); 10 clients train at a time.
Softmax regression, E = 1 local epoch, batch 10, lr 0.05, on

* ``synthetic``: FedProx's Synthetic(1,1), 30 devices, 20 % of each held out;
* ``digits``: scikit-learn's ``load_digits`` (pixels / 16), 20 % held out
  (stratified), the rest split over 30 clients by Dirichlet(0.5) label skew.

Rules: FedAvg (synchronous, 10 clients per round, a round lasts as long as its
slowest client), FedAsync (alpha 0.6, polynomial staleness a = 0.5), FedBuff
(K = 5, eta_g = 1, 1/sqrt(1 + staleness)).  Each runs for the same virtual time
budget; the target accuracy A is FedAvg's final test accuracy, and the table
gives the first virtual time at which each rule's test accuracy reached 0.9 A and
A (evaluated about every virtual time unit; "-" = not reached), with the speed-up
over FedAvg.  Accuracies of the async rules fluctuate, so a first hit can be early.
"""
import argparse
import time

from cyfed.asynchronous import AsyncTrainer, FedAsync, FedBuff, SyncFedAvg
from fl_datasets import DATASETS

CONCURRENCY = 10


# rule, and server updates per virtual time unit (roughly) to evaluate about once a unit
RULES = {
    "FedAvg (sync, 10/round)": (SyncFedAvg, 1),
    "FedAsync (a=0.6, poly 0.5)": (lambda: FedAsync(0.6, "polynomial", a=0.5), 8),
    "FedBuff (K=5, sqrt)": (lambda: FedBuff(buffer_size=5, server_lr=1.0), 2),
}


def run(make, eval_every, train, test, budget, seed):
    trainer = AsyncTrainer(make(), "softmax", updates=10**7, max_time=budget,
                           concurrency=CONCURRENCY, local_epochs=1, batch_size=10, lr=0.05,
                           delay="lognormal", delay_params=(0.0, 1.0, 0.5), seed=seed,
                           eval_every=eval_every)
    trainer.fit(train, test)
    return [(r["time"], r["test_accuracy"]) for r in trainer.history_ if "test_accuracy" in r], \
        trainer


def first_time(curve, target):
    for t, acc in curve:
        if acc >= target:
            return t
    return None


def table(name, budget, seed):
    train, test = DATASETS[name]()
    curves, trainers = {}, {}
    for label, (make, eval_every) in RULES.items():
        curves[label], trainers[label] = run(make, eval_every, train, test, budget, seed)
    base = next(iter(RULES))
    target = curves[base][-1][1]
    print(f"\n{name}: virtual time budget {budget:g}, target A = FedAvg's final test accuracy "
          f"{target:.3f} (seed {seed})\n")
    print("| rule | server updates | client results | final acc | time to 0.9 A | "
          "time to A | speed-up to A |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_time = first_time(curves[base], target)
    for label, curve in curves.items():
        h = trainers[label].history_
        t90, t100 = first_time(curve, 0.9 * target), first_time(curve, target)
        speed = f"{base_time / t100:.1f}x" if t100 else "-"
        print(f"| {label} | {h[-1]['update']} | {h[-1]['arrivals']} | {curve[-1][1]:.3f} | "
              f"{'-' if t90 is None else f'{t90:.1f}'} | "
              f"{'-' if t100 is None else f'{t100:.1f}'} | {speed} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=500.0,
                        help="virtual time each rule runs for (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS),
                        default=list(DATASETS))
    parser.add_argument("--smoke", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    budget = 30.0 if args.smoke else args.budget
    start = time.perf_counter()
    for name in args.datasets:
        table(name, budget, args.seed)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
