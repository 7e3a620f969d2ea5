"""Federated learning over many virtual clients, in one process or over MPI ranks.

`FederatedTrainer` (trainer) runs rounds as a pipeline of `stages` (sample ->
broadcast -> local training -> client stages -> gather -> server stages ->
aggregate -> evaluate -> publish) over the clients a rank hosts (`clients`);
`write_history` (history) saves a run's records.  Strategies live in
`cyfed.strategies`, asynchronous training in `cyfed.asynchronous`.
"""
from cyfed.federated.history import write_history
from cyfed.federated.trainer import FederatedTrainer

__all__ = ["FederatedTrainer", "write_history"]
