"""FedAvg vs FedProx on FedProx's Synthetic(1,1), the paper's setting.

    mpiexec -n 4 python mpi_examples/federated_synthetic.py [--rounds 200]
    python mpi_examples/federated_synthetic.py            (one process)

30 devices (60 features, 10 classes), 20 % of each device's rows held out;
10 clients per round, E = 20 local epochs, batch 10, lr 0.01, softmax model.
The devices are spread over the ranks; the models are bit-identical for any
number of ranks.  Rank 0 prints the participants' training loss and the test
accuracy per round for both strategies.
"""
import argparse

from cyfed.comm import get_comm
from cyfed.data import make_fedprox_synthetic, split_devices
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg, FedProx


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="print every N rounds")
    args = parser.parse_args()
    comm = get_comm()
    train, test = split_devices(make_fedprox_synthetic(1.0, 1.0, n_devices=30, seed=0), 0.2)
    runs = {}
    for name, strategy in [("FedAvg", FedAvg()), ("FedProx mu=1", FedProx(mu=1.0))]:
        trainer = FederatedTrainer(strategy, "softmax", rounds=args.rounds, clients_per_round=10,
                                   local_epochs=20, batch_size=10, lr=0.01, seed=0, comm=comm)
        runs[name] = trainer.fit(train, test=test).history_
    if comm.rank == 0:
        print(f"Synthetic(1,1), 30 devices over {comm.size} rank(s)")
        print(f"{'round':>5s}  " + "  ".join(f"{n + ' loss':>18s} {'acc':>6s}" for n in runs))
        for r in range(0, args.rounds, args.every):
            print(f"{r:5d}  " + "  ".join(f"{h[r]['train_loss']:18.4f} {h[r]['test_accuracy']:6.3f}"
                                         for h in runs.values()))
        last = {n: h[-1] for n, h in runs.items()}
        print("final " + "  ".join(f"{n}: loss {h['train_loss']:.4f}, test accuracy "
                                   f"{h['test_accuracy']:.3f}" for n, h in last.items()))


if __name__ == "__main__":
    main()
