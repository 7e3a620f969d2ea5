"""Federated rounds with compressed uplink/downlink: bytes on the wire, error feedback,
reproducibility over ranks and checkpoints."""
import warnings

import numpy as np
import pytest

from cyfed import compress
from cyfed.comm import LocalComm, get_comm
from cyfed.compress.rounds import WIRE_DTYPE
from cyfed.data import make_fedprox_synthetic
from cyfed.federated import FederatedTrainer
from cyfed.privacy import ClientDP
from cyfed.strategies import FedAvg, FedMedian, Scaffold

COMM = get_comm()
DEVICES = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
PARAMS = dict(rounds=4, clients_per_round=6, local_epochs=2, batch_size=10, lr=0.01, seed=7)


def fit(strategy=None, comm=None, **kwargs):
    params = dict(PARAMS, **kwargs)
    return FederatedTrainer(strategy or FedAvg(), "softmax", comm=comm or LocalComm(),
                            **params).fit(DEVICES)


def test_fp16_uplink_is_the_plain_round_to_half_precision():
    plain, half = fit(), fit(compression=compress.FP16())
    np.testing.assert_allclose(half.coef_, plain.coef_, atol=2e-4)
    assert not np.array_equal(half.coef_, plain.coef_)


@pytest.mark.parametrize("compressor", [compress.TopK(0.05), compress.QSGD(15),
                                        compress.RandK(0.1, unbiased=False),
                                        compress.ScaledSign(),
                                        compress.PowerSGD(2)],
                         ids=["topk", "qsgd", "randk", "sign", "powersgd"])
def test_bytes_up_are_the_buffers_handed_to_gatherv(compressor):
    trainer = fit(compression=compressor, error_feedback=True)
    p = 60 * 10 + 10
    shape = (p // 10, 10) if isinstance(compressor, compress.PowerSGD) else p
    one = compressor.max_payload_nbytes(shape, WIRE_DTYPE)
    for record in trainer.history_:
        m = record["clients"]
        # payloads, plus [id, n, loss, steps] float64 and one int64 length per client
        assert record["bytes_up"] == m * (one + 4 * 8 + 8)
    plain = fit()
    assert plain.history_[0]["bytes_up"] == 6 * (p * 8 + 4 * 8)


def test_downlink_compression_counts_its_payload_and_ends_with_the_exact_model():
    trainer = fit(downlink_compression=compress.TopK(0.1))
    p = 610
    assert all(r["bytes_down"] == compress.TopK(0.1).max_payload_nbytes(p, WIRE_DTYPE)
               for r in trainer.history_)
    plain = fit()
    assert not np.allclose(trainer.coef_, plain.coef_, atol=1e-3)     # clients saw less
    assert np.isfinite(trainer.coef_).all()


def test_error_feedback_sends_what_topk_alone_drops():
    """Over the rounds EF delivers the dropped coordinates: its model is closer to the
    uncompressed one than plain top-k's."""
    plain = fit(rounds=12, clients_per_round=12)
    alone = fit(rounds=12, clients_per_round=12, compression=compress.TopK(0.02))
    ef = fit(rounds=12, clients_per_round=12, compression=compress.TopK(0.02),
             error_feedback=True)
    assert (np.linalg.norm(ef.coef_ - plain.coef_)
            < np.linalg.norm(alone.coef_ - plain.coef_))


@pytest.mark.parametrize("strategy", [FedMedian(), Scaffold()], ids=["median", "scaffold"])
def test_compression_composes_with_every_strategy(strategy):
    trainer = fit(strategy, compression=compress.QSGD(127), error_feedback=True)
    plain = fit(type(strategy)())
    np.testing.assert_allclose(trainer.coef_, plain.coef_, atol=0.05)


def test_resume_with_error_feedback_and_downlink_ends_bit_identical(tmp_path):
    options = dict(compression=compress.TopK(0.05), error_feedback=True,
                   downlink_compression=compress.QSGD(31), rounds=6)
    whole = fit(**options)
    path = tmp_path / "run.npz"
    first = FederatedTrainer(FedAvg(), "softmax", comm=LocalComm(), checkpoint=path,
                             **dict(PARAMS, **options))
    first.setup(DEVICES)
    for rnd in range(3):
        first.run_round(rnd)
    first._save(3)
    resumed = fit(checkpoint=path, resume=True, **options)
    np.testing.assert_array_equal(resumed.coef_, whole.coef_)


def test_non_finite_updates_are_named_and_left_out():
    devices = [(X.copy(), y) for X, y in DEVICES]
    devices[3][0][0, 0] = 1e300                   # client 3's update overflows
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = FederatedTrainer(FedAvg(), "softmax", comm=LocalComm(),
                                   compression=compress.TopK(0.1),
                                   **dict(PARAMS, clients_per_round=12, lr=1.0)).fit(devices)
    assert any("client id(s) [3]" in str(w.message) for w in caught)
    assert np.isfinite(trainer.coef_).all()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(compression="topk"), TypeError, "compression must be a cyfed.compress compressor"),
    (dict(downlink_compression=1), TypeError, "downlink_compression must be"),
    (dict(error_feedback=True), ValueError, "error_feedback needs compression"),
    (dict(error_feedback=1, compression=compress.FP16()), TypeError, "error_feedback must"),
    (dict(error_feedback=True, compression=compress.RandK(5)), ValueError, "contractive"),
    (dict(compression=compress.FP16(), privacy=ClientDP(noise_multiplier=1.0)), ValueError,
     "does not combine with privacy"),
])
def test_bad_compression_options_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(**kwargs)


@pytest.mark.mpi
def test_compressed_rounds_are_bit_identical_for_any_ranks():
    options = dict(compression=compress.QSGD(15), error_feedback=True,
                   downlink_compression=compress.RandK(0.2), dropout=0.2)
    alone, spread = fit(**options), fit(comm=COMM, **options)
    np.testing.assert_array_equal(spread.coef_, alone.coef_)


@pytest.mark.mpi
def test_bytes_sent_and_received_are_the_buffers_this_rank_handed_to_mpi():
    trainer = fit(comm=COMM, compression=compress.TopK(0.05), error_feedback=True)
    for record in trainer.history_:
        if COMM.size == 1:
            assert record["bytes_sent"] == record["bytes_received"] == 0
        elif COMM.rank > 0:      # gatherv of its clients' payloads; bcasts of payload and model
            assert record["bytes_sent"] == record["bytes_up"]
            assert record["bytes_received"] == record["bytes_down"] + 610 * 8
