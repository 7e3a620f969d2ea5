"""The two federated workloads the benchmark scripts share (softmax regression,
30 clients):

* ``synthetic``: FedProx's Synthetic(1,1), 30 devices, 20 % of each held out;
* ``digits``: scikit-learn's ``load_digits`` (pixels / 16), 20 % held out
  (stratified), the rest split over 30 clients by Dirichlet(0.5) label skew.

Each function returns (clients, (X_test, y_test)).
"""
from cyfed.data import dirichlet, make_fedprox_synthetic, split_devices

N_CLIENTS = 30


def synthetic():
    return split_devices(make_fedprox_synthetic(1.0, 1.0, n_devices=N_CLIENTS, seed=0), 0.2)


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.2,
                                                        stratify=y, random_state=0)
    parts = dirichlet(y_train, N_CLIENTS, 0.5, min_size=10, seed=0)
    return [(X_train[p], y_train[p]) for p in parts], (X_test, y_test)


DATASETS = {"synthetic": synthetic, "digits": digits}
