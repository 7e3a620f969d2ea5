"""Data for distributed and federated training.

* sharding: which rows a rank holds (`shard_rows`) and loading only those (`load_shard`);
* partition: splitting a data set over federated clients, IID or not
  (`iid`, `dirichlet`, `shards`, `quantity_skew`);
* synthetic: the FedProx paper's Synthetic(alpha, beta) (`make_fedprox_synthetic`),
  Sent140-like sparse bag-of-words clients (`make_bag_of_words`) and a per-device
  train/test split (`split_devices`).
"""
from cyfed.data.partition import dirichlet, iid, quantity_skew, shards
from cyfed.data.sharding import load_shard, shard_rows
from cyfed.data.synthetic import make_bag_of_words, make_fedprox_synthetic, split_devices

__all__ = ["dirichlet", "iid", "load_shard", "make_bag_of_words", "make_fedprox_synthetic",
           "quantity_skew", "shard_rows", "shards", "split_devices"]
