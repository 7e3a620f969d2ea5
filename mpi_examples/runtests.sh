#!/usr/bin/env bash
# Run every example under mpiexec at several sizes; fail on any error or wrong answer.
# Usage: bash mpi_examples/runtests.sh   (needs mpiexec on PATH, e.g. pip install mpich)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run() { timeout 120 mpiexec -n "$1" python "${@:2}"; }
for n in 1 2 3 4; do
  out=$(run "$n" "$here/distributed_gd.py")
  echo "$out"
  grep -q "theta = \[0.73444079 0.18403266\]" <<<"$out"
done
run 2 "$here/distributed_logistic.py" --rows 20000 --iters 5
for n in 1 3; do     # no learning rate: the Newton solvers agree on the optimum
  out=$(run "$n" "$here/logistic_lbfgs.py" --rows 20000)
  echo "$out"
  grep -q "the Newton solvers agree on the optimum" <<<"$out"
done
# the article's example 4.2 (theta1, theta2), then FedAvg: bit-identical for 1, 2 and 3 ranks
one=$(run 1 "$here/federated_seed.py")
for n in 2 3; do
  out=$(run "$n" "$here/federated_seed.py")
  echo "$out"
  grep -q "theta1 = \[0.5856082  0.25610822\]" <<<"$out"
  grep -q "theta2 = \[0.49427    0.36450956\]" <<<"$out"
  test "$(grep "global theta" <<<"$one")" = "$(grep "global theta" <<<"$out")"
done
run 2 "$here/federated_synthetic.py" --rounds 4 --every 2
# DP + secure aggregation: the same model (and epsilon) for 1 and 3 ranks
one=$(run 1 "$here/federated_private.py" --rounds 4 --every 2 | tail -1)
three=$(run 3 "$here/federated_private.py" --rounds 4 --every 2 | tail -1)
echo "$three"
grep -q "^final: (.*, 1e-5)-DP test accuracy" <<<"$three"
test "$one" = "$three"
# a numpy MLP (CallableModel) with client DP + secure aggregation: the same parameters
# (SHA-256 of theta_) for 1 and 3 ranks
one=$(run 1 "$here/federated_custom_model.py" | tail -1)
three=$(run 3 "$here/federated_custom_model.py" | tail -1)
echo "$three"
grep -Eq "^final: test accuracy 0\.[6-9][0-9]*, .*theta sha256 [0-9a-f]{64}$" <<<"$three"
test "$one" = "$three"
# cross-validated grids (rows sharded, federated client folds): the same best scores
one=$(run 1 "$here/grid_search.py" | tail -1)
three=$(run 3 "$here/grid_search.py" | tail -1)
echo "$three"
grep -q "^best scores: " <<<"$three"
test "$one" = "$three"
# sparse text: byte-range LIBSVM shards + CSR federated clients; the same models for 1 and 3 ranks
one=$(run 1 "$here/sparse_text.py" --clients 200 | tail -3)
three=$(run 3 "$here/sparse_text.py" --clients 200 | tail -3)
echo "$three"
grep -q "^federated coef checksum" <<<"$three"
test "$(tail -1 <<<"$one")" = "$(tail -1 <<<"$three")"
runs=$(mktemp -d)
timeout 120 mpiexec -n 2 python -m cyfed train --config "$here/train_fedprox.toml" --quiet \
  -o "$runs/fedprox.npz" --set trainer.rounds=3
test -s "$runs/fedprox.npz"
rm -rf "$runs"
echo "mpi_examples: all passed"
