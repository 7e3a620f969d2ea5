"""Secure aggregation: the server learns the sum of the clients' updates, not the updates.

Implements the protocol of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017), honest-but-curious server, and
its SecAgg+ variant of Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead" (CCS 2020), where each client masks with only
k = O(log n) neighbours of a public random graph instead of all n - 1 others.

Ring and quantisation
    Updates are clipped to [-c, c] and stochastically rounded to L levels,
    q = floor((x + c) / step + u), u ~ U[0, 1), step = 2c / (L - 1), so
    E[q] step - c = x.  L - 1 = floor((2^bits - 1) / n) for n sampled clients
    (capped at 2^53 so float64 rounding is exact), hence a sum of n values never
    wraps around the ring R = Z_{2^bits}.  See `quantize` / `dequantize`.

Masks
    Client u sends  y_u = q_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv)
                                      - sum_{v in N(u), v < u} PRG(s_uv)  (mod R),
    s_uv = HKDF(X25519(s_u^SK, s_v^PK)) = s_vu, PRG = AES-256-CTR keystream
    (hardware AES; ChaCha20 measured no faster here) read as ring elements.  Pairwise
    masks cancel in the sum over clients whose inputs arrived; the self-mask b_u
    (32 bytes from the OS CSPRNG) stops the server from unmasking a late client
    whose pairwise masks it had to reconstruct.

Phases (all messages pass through the server, rank 0)
    0. AdvertiseKeys: u generates X25519 pairs (c_u: share encryption, s_u: masks)
       and b_u; the server forwards public keys to the neighbours N(u).
    1. ShareKeys: t-of-h Shamir shares of s_u^SK and b_u (h = |N(u)| + 1: the
       neighbours and u itself), each AES-GCM encrypted under
       HKDF(X25519(c_u^SK, c_v^PK)) with (u, v) as associated data, routed by
       the server.
    2. MaskedInputCollection: u sends y_u; U2 = clients whose y_u arrived.
    3. Unmasking: the server announces U2; each responding client v returns, for
       every u whose shares it holds, the b_u share if u is in U2, else the s_u^SK
       share -- never both for one u, and only once per round.  The server
       interpolates b_u for u in U2 and s_u^SK for dropped neighbours of U2,
       removes their masks and gets sum_{u in U2} q_u exactly.
    Fewer than t shares for a needed secret, or fewer than t masked inputs,
    abandon the round with `SecAggError`; a wrong sum is never returned.

Out of scope: a malicious server (Bonawitz's consistency-check round and
signatures), authenticated public keys (a PKI), and differential privacy.
"""
import dataclasses
import math
import numbers
import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cyfed import _validation as check
from cyfed._secagg_ring import (MAX_BITS, MIN_BITS, MaskPRG, dequantize, neighbour_graph,
                                quantization_step, quantize, ring_dtype)
from cyfed._secagg_wire import SecAggError, _exchange, _exchange_masked, _merge, _per_rank
from cyfed._shamir import ELEMENT_BYTES, PRIME, lagrange_at_zero, shamir_combine, shamir_split
from cyfed.comm import on_every_rank

__all__ = ["SecAggError", "SecureAggregation", "SecureSum", "quantize", "dequantize",
           "neighbour_graph", "quantization_step", "ring_dtype", "MaskPRG",
           "shamir_split", "shamir_combine"]

#: Sub-stream of the round's seed for the simulated unmasking dropouts.
_DROP_STREAM = 1
_INFO_MASK = b"cyfed-secagg pairwise mask seed"
_INFO_ENC = b"cyfed-secagg share encryption key"
_KEY_BYTES = 32


# ------------------------------------------------------------------------ key helpers

def _public_bytes(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def _private_int(private_key):
    raw = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    return int.from_bytes(raw, "big")


def _agree(private_key, peer_public, info):
    """32-byte key = HKDF-SHA256(X25519(private_key, peer_public), info)."""
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(shared)


def _route_tag(sender, recipient):
    """AES-GCM associated data: a ciphertext re-routed by the server fails to decrypt."""
    return struct.pack("<qq", int(sender), int(recipient))


def _secret_bytes(value, what):
    if value >> (8 * _KEY_BYTES):
        raise SecAggError(f"round abandoned: the shares of {what} are inconsistent")
    return value.to_bytes(_KEY_BYTES, "big")


# ----------------------------------------------------------------------- the parties

class _Client:
    """One client's side of the protocol; key material from the OS CSPRNG."""

    def __init__(self, cid, neighbours, holders, threshold):
        self.id, self.neighbours, self.holders, self.t = cid, neighbours, holders, threshold
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self._b = os.urandom(_KEY_BYTES)
        self._held = {}            # owner -> (b share y, s share y) at x = my position + 1
        self._answered = False

    def advertise(self):
        return _public_bytes(self._c), _public_bytes(self._s)

    def share_keys(self, public_keys):
        """Encrypted shares {v: nonce + ciphertext} for each neighbour v; keeps its own."""
        if set(public_keys) != set(self.neighbours.tolist()):
            raise SecAggError(f"round abandoned: client {self.id} got keys of the wrong clients")
        self._s_public = {v: s_pk for v, (_, s_pk) in public_keys.items()}
        self._aead = {v: AESGCM(_agree(self._c, c_pk, _INFO_ENC))
                      for v, (c_pk, _) in public_keys.items()}
        h = len(self.holders)
        b_shares = shamir_split(int.from_bytes(self._b, "big"), h, self.t)
        s_shares = shamir_split(_private_int(self._s), h, self.t)
        out = {}
        for v, (_, b_y), (_, s_y) in zip(self.holders.tolist(), b_shares, s_shares):
            if v == self.id:
                self._held[v] = (b_y, s_y)
                continue
            nonce = os.urandom(12)
            plain = b_y.to_bytes(ELEMENT_BYTES, "big") + s_y.to_bytes(ELEMENT_BYTES, "big")
            out[v] = nonce + self._aead[v].encrypt(nonce, plain, _route_tag(self.id, v))
        return out

    def receive_shares(self, inbox):
        """Decrypt the shares the neighbours sent (through the server)."""
        if set(inbox) != set(self.neighbours.tolist()):
            raise SecAggError(f"round abandoned: client {self.id} did not get a share from "
                              f"each neighbour")
        for u, blob in inbox.items():
            try:
                plain = self._aead[u].decrypt(blob[:12], blob[12:], _route_tag(u, self.id))
            except InvalidTag:
                raise SecAggError(f"round abandoned: client {self.id} got a forged or "
                                  f"misrouted share from {u}") from None
            self._held[u] = (int.from_bytes(plain[:ELEMENT_BYTES], "big"),
                             int.from_bytes(plain[ELEMENT_BYTES:], "big"))

    def masked_input(self, x, out, quant, rng, prg):
        """out[:] = q_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^bits; returns #clipped coordinates."""
        clip_range, bits, n_summands = quant
        out[:] = quantize(x, clip_range, bits, n_summands, rng)
        prg.apply(out, self._b, +1)
        for v in self.neighbours.tolist():
            seed = _agree(self._s, self._s_public[v], _INFO_MASK)
            prg.apply(out, seed, +1 if v > self.id else -1)
        if bits < 8 * out.dtype.itemsize:
            out &= out.dtype.type((1 << bits) - 1)
        return int(np.count_nonzero(np.abs(x) > clip_range))

    def unmask(self, survivors):
        """({owner: b share} for owners in U2, {owner: s^SK share} for the others); once."""
        if self._answered:
            raise SecAggError(f"round abandoned: client {self.id} was asked to unmask twice")
        if len(survivors) < self.t:
            raise SecAggError(f"round abandoned: client {self.id} was told of only "
                              f"{len(survivors)} survivors, fewer than the threshold {self.t}")
        self._answered = True
        b, s = {}, {}
        for owner, (b_y, s_y) in self._held.items():
            if owner in survivors:
                b[owner] = b_y
            else:
                s[owner] = s_y
        return b, s


class _Server:
    """The server's side: routes messages, sums masked inputs, removes the masks."""

    def __init__(self, plan, d, prg, record):
        self.plan, self.d, self.prg = plan, d, prg
        self.bytes_up, self.bytes_down = {}, {}
        self.transcript = {} if record else None

    def route_keys(self, keys):
        """{u: (c_pk, s_pk)} -> {u: {v: keys[v] for v in N(u)}}."""
        missing = set(self.plan.sampled.tolist()) - set(keys)
        if missing:
            raise ValueError(f"sampled clients {sorted(missing)} are hosted on no rank")
        out = {u: {v: keys[v] for v in self.plan.neighbours[u].tolist()} for u in keys}
        self.s_public = {u: s_pk for u, (_, s_pk) in keys.items()}
        self.bytes_up["advertise"] = 2 * _KEY_BYTES * len(keys)
        self.bytes_down["advertise"] = 2 * _KEY_BYTES * sum(len(m) for m in out.values())
        self._record("public_keys", dict(keys))
        return out

    def route_shares(self, outboxes):
        """{u: {v: ciphertext}} -> {v: {u: ciphertext}}."""
        inbox = {u: {} for u in outboxes}
        for u, box in outboxes.items():
            for v, blob in box.items():
                inbox[v][u] = blob
        nbytes = sum(len(blob) for box in outboxes.values() for blob in box.values())
        self.bytes_up["share_keys"] = self.bytes_down["share_keys"] = nbytes
        self._record("ciphertexts", outboxes)
        return inbox

    def collect(self, ids, masked):
        """Sum the masked inputs (rows of `masked`, clients `ids`); returns sorted U2."""
        self._require(len(ids), "masked inputs arrived")
        self.total = masked.sum(axis=0, dtype=masked.dtype)       # wraps mod 2^width
        self.survivors = np.sort(np.asarray(ids, dtype=np.int64))
        self.bytes_up["masked_input"] = masked.nbytes
        self.bytes_down["masked_input"] = 8 * len(ids) * len(ids)   # U2 to each survivor
        if self.transcript is not None:
            self.transcript["masked"] = dict(zip(ids, masked.copy()))
        return self.survivors

    def unmask(self, answers):
        """Reconstruct b_u (u in U2) and s_u^SK (dropped u next to U2), remove the masks."""
        plan, survivors = self.plan, set(self.survivors.tolist())
        b_shares, s_shares = {}, {}
        for holder, (b, s) in answers.items():
            if set(b) & set(s):
                raise SecAggError(f"round abandoned: client {holder} revealed both shares "
                                  f"of {sorted(set(b) & set(s))}")
            for owner, y in b.items():
                b_shares.setdefault(owner, []).append((plan.x_of(owner, holder), y))
            for owner, y in s.items():
                s_shares.setdefault(owner, []).append((plan.x_of(owner, holder), y))
        self.bytes_up["unmask"] = ELEMENT_BYTES * sum(len(b) + len(s)
                                                      for b, s in answers.values())
        self.answered = np.array(sorted(answers), dtype=np.int64)
        self._record("unmask_answers", answers)
        if set(b_shares) - survivors or set(s_shares) & survivors:
            raise SecAggError("round abandoned: a client revealed the wrong kind of share")
        total = self.total
        for u in self.survivors.tolist():
            b_u = self._combine(b_shares.get(u, []), f"the self-mask of client {u}")
            self.prg.apply(total, _secret_bytes(b_u, f"b_{u}"), -1)
        for u in plan.sampled.tolist():
            alive = [v for v in plan.neighbours[u].tolist() if v in survivors]
            if u in survivors or not alive:
                continue
            secret = self._combine(s_shares.get(u, []), f"the mask key of dropped client {u}")
            key = X25519PrivateKey.from_private_bytes(_secret_bytes(secret, f"s_{u}"))
            if _public_bytes(key) != self.s_public[u]:
                raise SecAggError(f"round abandoned: the shares of s_{u} are inconsistent")
            for v in alive:     # v added +PRG(s_uv) if u > v, -PRG if u < v: undo it
                self.prg.apply(total, _agree(key, self.s_public[v], _INFO_MASK),
                               -1 if u > v else +1)
        return total

    def _require(self, count, what):
        """Abandon the round when fewer than t of something arrived."""
        if count < self.plan.threshold:
            raise SecAggError(f"round abandoned: {count} {what}, fewer than the threshold "
                              f"{self.plan.threshold}")

    def _combine(self, shares, what):
        self._require(len(shares), f"shares of {what} returned")
        t = self.plan.threshold
        shares = sorted(shares)[:t]
        xs = tuple(x for x, _ in shares)
        weights = self.plan.lagrange.get(xs)
        if weights is None:
            weights = self.plan.lagrange[xs] = lagrange_at_zero(xs)
        return sum(w * y for w, (_, y) in zip(weights, shares)) % PRIME

    def _record(self, key, value):
        if self.transcript is not None:
            self.transcript[key] = value



@dataclasses.dataclass
class _Plan:
    """What every party knows before a round: the sampled ids, the graph, t."""

    sampled: np.ndarray                 # sorted int64 ids
    neighbours: dict                    # id -> sorted int64 ids of N(u)
    holders: dict                       # id -> sorted int64 ids of N(u) + {u}
    threshold: int
    lagrange: dict = dataclasses.field(default_factory=dict)   # xs -> weights (cache)

    @classmethod
    def build(cls, sampled, degree, threshold, seed):
        graph = sampled[neighbour_graph(len(sampled), degree, seed)]
        ids = sampled.tolist()
        neighbours = dict(zip(ids, graph))
        holders = {u: np.sort(np.append(row, u)) for u, row in neighbours.items()}
        return cls(sampled, neighbours, holders, threshold)

    def x_of(self, owner, holder):
        """Shamir x-coordinate of `holder`'s share of `owner`'s secrets."""
        row = self.holders.get(owner)
        pos = -1 if row is None else int(np.searchsorted(row, holder))
        if pos < 0 or pos >= len(row) or row[pos] != holder:
            raise SecAggError(f"round abandoned: client {holder} returned a share of client "
                              f"{owner} it cannot hold")
        return pos + 1


# --------------------------------------------------------------------- the public API

@dataclasses.dataclass
class SecureSum:
    """What the server learns from one `SecureAggregation.secure_sum` round.

    Attributes
    ----------
    total : (d,) float64, dequantised sum over `clients`.
    clients : sorted int64 ids whose masked input was summed (U2).
    clipped : int, coordinates clipped at quantisation, summed over `clients`.
    unresponsive : sorted int64 ids of U2 that did not answer the unmasking request.
    bytes_up, bytes_down : dict phase -> payload bytes client->server / server->client
        (keys, ciphertexts, masked vectors, shares; ids and framing not counted).
    transcript : dict or None, the server's view (messages it received), when asked.
    """

    total: np.ndarray
    clients: np.ndarray
    clipped: int
    unresponsive: np.ndarray
    bytes_up: dict
    bytes_down: dict
    transcript: "dict | None" = None


class SecureAggregation:
    """Secure aggregation of float vectors, SecAgg (Bonawitz et al. 2017) or SecAgg+
    (Bell et al. 2020), over a `cyfed.comm` communicator with the server on rank 0.

    Parameters
    ----------
    clip_range : float > 0
        Coordinates are clipped to [-clip_range, clip_range] before quantisation.
    bits : int in [16, 62]
        The ring is Z_{2^bits} (uint32 arithmetic up to 32 bits, uint64 above).  For
        n sampled clients the quantisation step is 2 clip_range / floor((2^bits - 1) / n),
        and the dequantised sum is within n * step of the clipped float sum.
    neighbours : None, int >= 1 or "log"
        None: every client masks with all others (SecAgg, complete graph).  An int k:
        SecAgg+ over a Harary graph of degree 2 ceil(k / 2) (the complete graph when that
        reaches n - 1).  "log": k = 2 ceil(log2 n), the O(log n) of Bell et al.
    threshold : None, int >= 2 or float in (0, 1]
        Shares needed to rebuild a secret, out of the h = degree + 1 holders (neighbours
        and the owner).  None: floor(h / 2) + 1, a strict majority, as Bonawitz et al.
        require (t > n / 2) so that an adversary cannot obtain both kinds of share.
        A float is a fraction of h, rounded up (at least 2), as Flower's
        SecAggPlusWorkflow(reconstruction_threshold=float) is a fraction of num_shares
        (Flower has no default: both num_shares and reconstruction_threshold are required).
        The round fails when fewer than t clients send masked inputs, or when fewer than
        t holders of a needed secret answer the unmasking request.
    drop_after_masking : float in [0, 1)
        Probability that a client that sent its masked input does not answer the
        unmasking request (simulated dropout, drawn from the round's seed).
    max_weight : float > 0
        In federated rounds without DP a client sends w u with w = min(n_k, max_weight)
        / max_weight in [0, 1] (and w itself), so that FedAvg's sample weighting stays
        inside the quantisation range (Flower's SecAggPlusWorkflow max_weight, default
        1000); clients with more rows than max_weight weigh as much as max_weight rows.
    """

    def __init__(self, *, clip_range=1.0, bits=32, neighbours=None, threshold=None,
                 drop_after_masking=0.0, max_weight=1000.0):
        if not (isinstance(clip_range, numbers.Real) and math.isfinite(clip_range)
                and clip_range > 0):
            raise ValueError(f"clip_range must be a finite number > 0, got {clip_range!r}")
        if not check.is_int(bits) or not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
        if not (neighbours is None or neighbours == "log" or (check.is_int(neighbours)
                                                              and neighbours >= 1)):
            raise ValueError(f"neighbours must be None, an integer >= 1 or 'log', "
                             f"got {neighbours!r}")
        if not (threshold is None or (check.is_int(threshold) and threshold >= 2)
                or (isinstance(threshold, float) and 0 < threshold <= 1)):
            raise ValueError(f"threshold must be None, an integer >= 2 or a float in (0, 1], "
                             f"got {threshold!r}")
        if not (isinstance(drop_after_masking, numbers.Real) and 0 <= drop_after_masking < 1):
            raise ValueError(f"drop_after_masking must be a probability in [0, 1), "
                             f"got {drop_after_masking!r}")
        self.clip_range, self.bits = float(clip_range), int(bits)
        self.neighbours, self.threshold = neighbours, threshold
        self.drop_after_masking = float(drop_after_masking)
        if not (isinstance(max_weight, numbers.Real) and math.isfinite(max_weight)
                and max_weight > 0):
            raise ValueError(f"max_weight must be a finite number > 0, got {max_weight!r}")
        self.max_weight = float(max_weight)

    def degree(self, m):
        """Number of neighbours of each client when m clients are sampled."""
        if self.neighbours is None:
            return m - 1
        k = 2 * math.ceil(math.log2(m)) if self.neighbours == "log" else self.neighbours
        return min(2 * math.ceil(k / 2), m - 1)

    def reconstruction_threshold(self, m):
        """t, the shares needed per secret when m clients are sampled."""
        h = self.degree(m) + 1
        if self.threshold is None:
            return h // 2 + 1
        if isinstance(self.threshold, float):
            return max(2, math.ceil(self.threshold * h))
        return self.threshold

    def check_clients(self, m):
        """ValueError if m sampled clients cannot run the protocol with these parameters."""
        if not check.is_int(m) or m < 2:
            raise ValueError(f"secure aggregation needs at least 2 sampled clients, got {m!r}")
        if ((1 << self.bits) - 1) // m < 1:
            raise ValueError(f"bits={self.bits}: the ring Z_2^{self.bits} cannot hold a sum "
                             f"of {m} clients; raise bits")
        h = self.degree(m) + 1
        t = self.reconstruction_threshold(m)
        if t > h:
            raise ValueError(f"threshold={t} exceeds the {h} holders of each secret "
                             f"(neighbours + 1) with {m} sampled clients")

    def secure_sum(self, comm, seed, sampled, hosted, vectors, d, *, unresponsive=(),
                   transcript=False):
        """One secure aggregation round among the `sampled` clients (collective).

        Parameters
        ----------
        comm : Communicator
            The server is rank 0; every rank hosts some clients.
        seed : int or tuple of ints >= 0
            Seeds the neighbour graph (default_rng(seed)), each client's stochastic
            rounding (default_rng((*seed, client_id))) and the simulated dropouts.
        sampled : (n,) int64, sorted unique ids, identical on every rank.
        hosted : sorted int64 ids of the clients this rank hosts (all of them).
        vectors : dict {client_id: (d,) float64}
            Inputs of the clients of this rank that send a masked input; a sampled
            client in no rank's dict drops after ShareKeys.
        d : int, the vector length (on every rank).
        unresponsive : iterable of ids
            Clients that do not answer the unmasking request, on top of the
            `drop_after_masking` draws (for tests of dropout patterns).
        transcript : bool
            Keep the server's view (messages received) in the result.

        Returns
        -------
        SecureSum on rank 0, None on other ranks.

        Raises
        ------
        ValueError (every rank) for bad arguments on any rank; SecAggError (every
        rank) when the round is abandoned.
        """
        seed, sampled, hosted, d = on_every_rank(
            comm, lambda: self._check_call(seed, sampled, hosted, vectors, d))
        m = len(sampled)
        plan = _Plan.build(sampled, self.degree(m), self.reconstruction_threshold(m), seed)
        prg = MaskPRG(ring_dtype(self.bits))
        server = _Server(plan, d, prg, transcript) if comm.rank == 0 else None
        silent = set(int(u) for u in unresponsive)
        clients = {}

        def advertise():
            for u in np.intersect1d(sampled, hosted).tolist():
                clients[u] = _Client(u, plan.neighbours[u], plan.holders[u], plan.threshold)
            return sampled.tobytes(), {u: c.advertise() for u, c in clients.items()}

        hosts = {}

        def route_keys(gathered):
            keys = {}
            for rank, (ids_bytes, rank_keys) in enumerate(gathered):
                if ids_bytes != sampled.tobytes():
                    raise ValueError(f"`sampled` differs between rank 0 and rank {rank}")
                for u in rank_keys:
                    if u in hosts:
                        raise ValueError(f"client {u} is hosted on ranks {hosts[u]} and {rank}")
                    hosts[u] = rank
                keys.update(rank_keys)
            return _per_rank(server.route_keys(keys), hosts, comm.size)

        keys = _exchange(comm, advertise, route_keys)
        outboxes = _exchange(comm, lambda: {u: c.share_keys(keys[u]) for u, c in clients.items()},
                             lambda got: _per_rank(server.route_shares(_merge(got)), hosts,
                                                   comm.size))
        quant = (self.clip_range, self.bits, m)
        survivors = _exchange_masked(comm, lambda: self._mask(clients, outboxes, vectors, d, quant,
                                                              seed, prg),
                                     server, d, ring_dtype(self.bits))
        alive = set(survivors.tolist())
        answering = [u for u in clients if u in alive and u not in silent
                     and not self._drops(seed, u)]

        def unmask(gathered):
            server.unmask(_merge(gathered))
            return [None] * comm.size

        _exchange(comm, lambda: {u: clients[u].unmask(alive) for u in answering}, unmask)
        if comm.rank != 0:
            return None
        total = server.total
        if self.bits < 8 * total.dtype.itemsize:
            total &= total.dtype.type((1 << self.bits) - 1)
        return SecureSum(
            total=dequantize(total, self.clip_range, self.bits, m, len(survivors)),
            clients=survivors, clipped=server.clipped,
            unresponsive=np.setdiff1d(survivors, server.answered),
            bytes_up=server.bytes_up, bytes_down=server.bytes_down,
            transcript=server.transcript)

    # -- helpers of secure_sum ---------------------------------------------------------
    def _check_call(self, seed, sampled, hosted, vectors, d):
        seed = (seed,) if check.is_int(seed) else tuple(seed)
        if not seed or not all(check.is_int(s) and s >= 0 for s in seed):
            raise ValueError(f"seed must be an int or a tuple of ints >= 0, got {seed!r}")
        sampled = _id_array(sampled, "sampled")
        hosted = _id_array(hosted, "hosted")
        self.check_clients(len(sampled))
        if not check.is_int(d) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        if not isinstance(vectors, dict):
            raise TypeError(f"vectors must be a dict {{client_id: vector}}, "
                            f"got {type(vectors).__name__}")
        mine = set(np.intersect1d(sampled, hosted).tolist())
        for u, x in vectors.items():
            if u not in mine:
                raise ValueError(f"vectors has client {u!r}, not a sampled client of this rank")
            x = np.asarray(x)
            if x.shape != (d,) or x.dtype.kind != "f":
                raise ValueError(f"vectors[{u}] must be a float array of shape ({d},), got "
                                 f"{x.dtype} {x.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"vectors[{u}] has non-finite values")
        return seed, sampled, hosted, int(d)

    def _mask(self, clients, inboxes, vectors, d, quant, seed, prg):
        """Phase 2 on this rank: decrypt shares, mask the inputs into one buffer."""
        for u, client in clients.items():
            client.receive_shares(inboxes.get(u, {}))
        ids = sorted(int(u) for u in vectors)
        out = np.empty((len(ids), d), dtype=ring_dtype(self.bits))
        clipped = 0
        for row, u in zip(out, ids):
            rng = np.random.default_rng((*seed, u))
            clipped += clients[u].masked_input(np.asarray(vectors[u], dtype=np.float64), row,
                                               quant, rng, prg)
        return (ids, clipped), out.ravel()

    def _drops(self, seed, u):
        if self.drop_after_masking == 0:
            return False
        return np.random.default_rng((*seed, u, _DROP_STREAM)).random() < self.drop_after_masking




def _id_array(ids, name):
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-d array of integer client ids, got "
                         f"{arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr[0] < 0 or np.any(np.diff(arr) <= 0)):
        raise ValueError(f"{name} must hold sorted, unique, non-negative client ids")
    return arr
