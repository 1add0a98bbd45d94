"""Review of the federated release paths (issue 17, section 5), as an attacker would.

Attacks tried on `dpjax.federated`: one user's hostile data (NaN, inf, 1e30 rows) that moves a
round's server update by more than C / n, or that reaches ANOTHER client's update through the
padded rows or the padded width; a server step (the Flower strategy's release) run twice,
without a recorded round or on clients that were not sampled; a local-DP message that moves by
more than 2C, or noise keys that repeat across clients or rounds; client sampling that is not
Poisson at q = expected / users, or full participation accounted with amplification; adaptive
clipping whose count moves by more than 1/2; a user-level account that the command line cannot
reproduce; the noise key or the seeds in a repr, a JSON record or a default public seed; a NOT
PRIVATE path taken silently; the Flower adapter (driven through a stand-in for flwr) noising per
client, telling the accountant late, or shipping the noise key to the nodes. With the same noise
key, two neighbouring runs draw the same noise, so the difference of their releases is the
difference of the pre-noise values.
"""

import json
import math
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax
from dpjax.federated import (
    CentralDP,
    FederatedSimulation,
    LocalDP,
    LocalSGD,
    NotPrivateFedAvg,
    RoundResult,
    client_batch,
    make_round,
    synthetic_federated_data,
)
from dpjax.federated import _cli as fed_cli
from dpjax.training import main

C, SIGMA = 0.7, 1.0
FED = synthetic_federated_data(num_users=6, dim=3, seed=0)
OWNER = next(u for u, rows in enumerate(FED.users) if 0 in rows)  # the user holding train[0]
N = 6.0


def _sq_loss(w, x, y):
    return (x @ w - jnp.asarray(y, jnp.float32)) ** 2


_LOCAL = LocalSGD(_sq_loss, learning_rate=0.1, epochs=2, batch_size=4)
_TX = optax.chain(CentralDP(C, SIGMA).aggregator(N, jax.random.key(0)), optax.sgd(1.0))
_ROUND = jax.jit(make_round(_LOCAL, _TX))
_FULL = client_batch(FED.users, np.arange(6), np.ones(6, bool), 4)
_W = jnp.ones(3)


def _step(x, client_mask):
    batch = _FULL._replace(client_mask=np.asarray(client_mask, bool))  # same shapes, same keys
    y = jnp.asarray(FED.train.y, jnp.float32)
    out, _ = _ROUND(_W, _TX.init(_W), jnp.asarray(x), y, batch, jax.random.key(1))
    return np.asarray(out)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_one_users_hostile_example_never_reaches_another_clients_update(value):
    # Finding 1 (fixed): padded rows point at train[0]. A masked row's loss gets a zero
    # cotangent, but 0 * NaN = NaN: user OWNER's NaN/inf example, with OWNER NOT EVEN SAMPLED,
    # turned every padded client's update into NaN and the clipper dropped them all (the
    # round's sum moved by 1.29 C instead of 0). Padded rows now repeat the client's own row.
    x = np.asarray(FED.train.x, np.float32)
    hostile = x.copy()
    hostile[0] = value
    absent = np.ones(6, bool)
    absent[OWNER] = False
    clean, attacked = _step(x, absent), _step(hostile, absent)
    assert np.all(np.isfinite(attacked))
    np.testing.assert_allclose(attacked, clean, rtol=0, atol=1e-6)


rows = st.sampled_from([np.nan, np.inf, 1e30, -3e38, 50.0, 0.0])


@settings(max_examples=6, deadline=None)
@given(value=rows, who=st.integers(0, 5))
def test_one_user_with_any_data_moves_the_round_by_at_most_c_over_n(value, who):
    """No finding beyond 1: adding user `who` (its rows set to `value`) moves the step by <= C/n."""
    x = np.asarray(FED.train.x, np.float32).copy()
    x[FED.users[who]] = value
    absent = np.ones(6, bool)
    absent[who] = False
    moved = np.linalg.norm(_step(x, np.ones(6, bool)) - _step(x, absent)) * N
    assert math.isfinite(moved) and moved <= C * (1 + 1e-5)


def test_a_clients_update_does_not_depend_on_how_far_the_round_pads_it():
    """No finding: the padded width P is the LARGEST sampled client's size (another user's data);
    a client's update is the same at P = 16 and P = 64 (row order keyed by (key, row) only)."""
    rows = FED.users[1]
    x, y = np.asarray(FED.train.x, np.float32), np.asarray(FED.train.y, np.float32)
    updates = []
    for width in (16, 64):
        idx = np.zeros(width, np.int64)
        idx[: len(rows)] = rows
        mask = np.arange(width) < len(rows)
        xs, ys, ms = jnp.asarray(x[idx]), jnp.asarray(y[idx]), jnp.asarray(mask)
        g = _LOCAL.client_update(_W, xs, ys, ms, jax.random.key(4))
        updates.append(np.asarray(g))
    assert np.linalg.norm(updates[0]) > 0
    np.testing.assert_allclose(updates[0], updates[1], rtol=1e-6, atol=1e-7)


def test_server_step_releases_only_a_round_that_sample_clients_recorded():
    # Finding 6 (fixed): `FederatedSimulation.server_step` (the Flower strategy's release) ran
    # without checking that the round had been told to the accountant: called twice, or without
    # `sample_clients`, or with a mask marking clients that were not sampled, it released rounds
    # (or participations) nobody accounted for. Each is now refused before anything is computed.
    sim = _sim(4.0, users=8)
    w = sim.init(jnp.zeros(2))
    pseudo = jnp.ones((8, 2))
    with pytest.raises(ValueError, match="sample_clients"):
        sim.server_step(w, pseudo, np.ones(8, bool))
    ids, mask = sim.sample_clients()
    assert 0 < mask.sum() < len(mask)  # some sampled, some padded or not
    pseudo = jnp.ones((len(ids), 2))
    with pytest.raises(ValueError, match="did not sample"):
        sim.server_step(w, pseudo, np.ones(len(ids), bool))
    w = sim.server_step(w, pseudo, mask)
    state = sim.opt_state
    with pytest.raises(ValueError, match="sample_clients"):
        sim.server_step(w, pseudo, mask)  # the same round again: unaccounted
    assert sim.opt_state is state and sim.round_index == 1
    assert _rounds_recorded(sim.tracker) == 1


def test_local_dp_message_moves_by_at_most_2c_and_its_noise_is_fresh_per_client_and_round():
    """No finding: any two inputs of a client move its message by <= 2C (the sensitivity that
    `GaussianRelease(sigma)` at std sigma 2C assumes); rows and rounds draw unrelated noise."""
    d = 4000
    tx = LocalDP(C, SIGMA).aggregator(1.0, jax.random.key(5))
    update = jax.jit(lambda g, s, m: tx.update(g, s, mask=m))
    state = tx.init(jnp.zeros(d))
    zeros = jnp.zeros((3, d))
    u = np.random.default_rng(0).normal(size=d).astype(np.float32) * 9
    first = jnp.array([True, False, False])
    a, _ = update(zeros.at[0].set(u), state, first)
    for other in (np.full(d, np.nan), np.full(d, np.inf), np.full(d, 1e30), np.zeros(d), -u):
        b, _ = update(zeros.at[0].set(jnp.asarray(other, jnp.float32)), state, first)
        moved = float(jnp.linalg.norm(a - b))
        assert math.isfinite(moved) and moved <= 2 * C * (1 + 1e-5)
    assert moved >= 2 * C * (1 - 1e-5)  # -u reaches the bound: the test can see a 2C move
    noises = []
    for _ in range(2):  # two rounds
        for i in range(3):
            out, _ = update(zeros, state, jnp.asarray(np.arange(3) == i))
            noises.append(np.asarray(out))
        _, state = update(zeros, state, jnp.ones(3, bool))
    corr = np.corrcoef(np.stack(noises))
    off = corr[~np.eye(6, dtype=bool)]
    assert np.max(np.abs(off)) < 0.1  # 6 independent draws (std of a correlation ~ 0.016)
    for z in noises:
        assert abs(z.std() / (SIGMA * 2 * C) - 1) < 0.05


def _sim(clients, mode=None, users=20, **kwargs):
    fed = synthetic_federated_data(num_users=users, dim=2, seed=3)
    return FederatedSimulation(
        fed, LocalSGD(_sq_loss, 0.1, batch_size=8), mode or CentralDP(C, 1.5), optax.sgd(1.0),
        clients_per_round=clients, key=jax.random.key(0), seed=11, delta=1e-3, **kwargs,
    )  # fmt: skip


def _rounds_recorded(tracker):
    """Rounds told to the tracker (it merges equal consecutive records into one with a count)."""
    return sum(getattr(r, "steps", getattr(r, "count", 1)) for r in tracker.releases)


def test_clients_are_poisson_sampled_at_q_and_full_participation_is_accounted_at_q_1():
    """No finding: each user takes part with rate q = 5/20 independently (the count varies);
    q = 1 samples every user every round and is recorded as GaussianRelease (no amplification)."""
    sim = _sim(5.0)
    assert sim.sampling_rate == 0.25
    masks = np.zeros((300, 20))
    for t in range(300):
        batch = sim.sampler.sample(t)
        masks[t, batch.indices[batch.mask]] = 1
    counts = masks.sum(axis=1)
    assert abs(masks.mean() - 0.25) < 0.02 and np.all(np.abs(masks.mean(axis=0) - 0.25) < 0.1)
    assert counts.std() > 1.0  # Poisson: not a fixed number of clients per round
    sim.init(jnp.zeros(2))
    sim.sample_clients()
    assert sim.tracker.releases == (dpjax.PoissonGaussianSteps(1.5, 0.25),)
    full = _sim(20.0)
    full.init(jnp.zeros(2))
    for _ in range(3):
        _, mask = full.sample_clients()
        full.round_index += 1
        assert mask.sum() == 20
    assert full.sampling_rate == 1.0
    assert all(type(r) is dpjax.GaussianRelease for r in full.tracker.releases)
    assert _rounds_recorded(full.tracker) == 3


def test_dpjax_epsilon_unit_user_reproduces_the_simulations_account(capsys):
    # Finding 5 (fixed): issue 12 asks for `dpjax epsilon --unit user`; it did not exist. It now
    # labels the account user-level and equals the simulation's, q < 1 and q = 1.
    for clients, q in ((5.0, "0.25"), (20.0, "1")):
        sim = _sim(clients)
        w = sim.init(jnp.zeros(2))
        for _ in range(3):
            w, result = sim.round(w)
        argv = ["epsilon", "--unit", "user", "--noise-multiplier", "1.5", "--sampling-rate", q]
        assert main([*argv, "--steps", "3", "--delta", "1e-3", "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["unit"] == "user"
        assert record["epsilon"] == pytest.approx(result.epsilon, rel=1e-6)
    assert main([*argv, "--steps", "3", "--delta", "1e-3"]) == 0
    text = capsys.readouterr().out
    assert "user-level" in text and "one user's" in text


def test_adaptive_central_dp_moves_the_sum_by_c_t_and_the_unclipped_fraction_by_half_over_n():
    """No finding: one client (NaN, inf, huge, normal) moves the noisy sum by <= C_t and the
    released unclipped fraction by <= 1/(2n); the round is recorded at the joint sigma."""
    n, d = 4.0, 5
    mode = CentralDP(C, SIGMA, adaptive=True, count_noise_multiplier=2.0)
    assert mode.release(0.1) == dpjax.PoissonGaussianSteps(SIGMA, 0.1)
    tx = mode.aggregator(n, jax.random.key(2))
    update = jax.jit(lambda g, s, m: tx.update(g, s, mask=m))
    state = tx.init(jnp.zeros(d))
    base = np.random.default_rng(1).normal(size=(4, d)).astype(np.float32)
    for value in (np.nan, np.inf, 1e30, 0.01, None):
        rows = base.copy()
        if value is not None:
            rows[2] = value
        mask = np.ones(4, bool)
        a, sa = update(jnp.asarray(rows), state, jnp.asarray(mask))
        mask[2] = False
        b, sb = update(jnp.asarray(rows), state, jnp.asarray(mask))
        assert float(jnp.linalg.norm(a - b)) * n <= C * (1 + 1e-5)
        moved = abs(float(sa.unclipped_fraction) - float(sb.unclipped_fraction)) * n
        assert 0.5 * (1 - 1e-4) <= moved <= 0.5 * (1 + 1e-4)


def test_simulation_repr_and_round_result_hide_the_noise_key_and_the_seed():
    # Finding 3 (fixed, low): repr(FederatedSimulation), a dataclass, printed the noise key's
    # data and the sampler's seed (any log line or f-string of the simulation).
    fed = synthetic_federated_data(num_users=6, dim=2, seed=0)
    secret = (3141592653 << 32) | 2718281828  # both key words long: no accidental match
    sim = FederatedSimulation(
        fed, LocalSGD(_sq_loss, 0.1, batch_size=8), CentralDP(C, 1.0), optax.sgd(1.0), 3.0,
        key=dpjax.key_from_seed(secret), seed=86753091234,
    )  # fmt: skip
    words = [str(int(v)) for v in np.asarray(jax.random.key_data(sim.key))]
    assert words == ["3141592653", "2718281828"]
    for text in (repr(sim), str(sim), f"{sim}", "%s" % (sim,)):  # noqa: UP031
        assert "86753091234" not in text and str(secret) not in text
        assert not any(w in text for w in words)
    with pytest.raises(TypeError):
        json.dumps({"sim": sim})
    assert RoundResult._fields == ("round", "epsilon", "num_clients", "seconds")


def test_cli_noise_and_sampling_come_from_a_secret_seed_unless_one_is_given(capsys, monkeypatch):
    # Finding 2 (fixed): `dpjax federated` defaulted to --seed 0 and derived the NOISE key and the
    # client sampler from it: anyone could redraw the noise, yet it printed a user-level epsilon.
    secret = 2**63 + 12345
    monkeypatch.setattr(dpjax, "secret_seed", lambda: secret)
    made = []

    class Spy(FederatedSimulation):
        def __post_init__(self):
            made.append((self.key, self.seed))
            super().__post_init__()

    monkeypatch.setattr(fed_cli, "FederatedSimulation", Spy)
    args = ["federated", "--dataset", "synthetic", "--users", "8", "--clients-per-round", "4"]
    args += ["--rounds", "1", "--noise-multiplier", "1", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    key, seed = made[-1]
    assert seed == secret
    want = dpjax.key_from_seed(dpjax.derive_seed(secret, 7))
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(want))
    assert str(secret) not in out and "seed" not in json.loads(out)
    assert main([*args, "--seed", "5"]) == 0  # an explicit seed: reproducible research
    assert made[-1][1] == 5


def test_not_private_is_never_a_silent_fallback(capsys):
    # Finding 4 (fixed, low): `dpjax federated --mode not-private` silenced the NOT PRIVATE
    # warning and printed no NOT PRIVATE label (only "(not-private)" at the end).
    for bad in (lambda: CentralDP(C, 0.0), lambda: CentralDP(math.inf, 1.0)):
        with pytest.raises(ValueError, match="noise_multiplier|l2_norm"):
            bad()
    for bad in (lambda: LocalDP(C, 0.0), lambda: LocalDP(0.0, 1.0)):
        with pytest.raises(ValueError, match="noise_multiplier|l2_norm"):
            bad()
    with pytest.raises(ValueError, match="mode"):
        _sim(5.0, mode=object())
    with pytest.warns(dpjax.NotPrivateWarning):
        NotPrivateFedAvg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        sim = _sim(5.0, mode=NotPrivateFedAvg())
    assert sim.tracker is None and sim.epsilon() == math.inf
    args = ["federated", "--dataset", "synthetic", "--users", "8", "--clients-per-round", "4"]
    assert main([*args, "--rounds", "1", "--mode", "not-private"]) == 0
    assert "NOT PRIVATE" in capsys.readouterr().out
    assert main([*args, "--rounds", "1"]) == 2  # a private mode needs sigma or a target
    assert "--noise-multiplier" in capsys.readouterr().err


# --- the Flower adapter, driven through a stand-in for flwr (flwr is an optional extra) ----------


class _Record(dict):
    pass


class _Arrays:
    def __init__(self, arrays):
        self.arrays = [np.asarray(a) for a in arrays]

    def to_numpy_ndarrays(self):
        return list(self.arrays)


class _Message:
    def __init__(self, content=None, reply_to=None, message_type=None, dst_node_id=None):
        self.content, self.dst_node_id = content, dst_node_id

    def has_error(self):
        return False


class _ClientApp:
    def train(self):
        def register(fn):
            self.train_fn = fn
            return fn

        return register


def _fake_flwr(monkeypatch):
    app = types.ModuleType("flwr.app")
    app.ArrayRecord, app.ConfigRecord, app.Message = _Arrays, _Record, _Message
    app.MetricRecord, app.RecordDict = _Record, _Record
    client = types.ModuleType("flwr.clientapp")
    client.ClientApp = _ClientApp
    strategy = types.ModuleType("flwr.serverapp.strategy")
    strategy.Strategy = object
    for name, module in {
        "flwr": types.ModuleType("flwr"),
        "flwr.app": app,
        "flwr.clientapp": client,
        "flwr.serverapp": types.ModuleType("flwr.serverapp"),
        "flwr.serverapp.strategy": strategy,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_flower_adapter_noises_once_at_the_server_after_recording_and_ships_no_noise_key(
    monkeypatch,
):
    """No finding: each round is recorded before any client computes, the clients reply with
    raw updates, ONE noise draw per round at the server (equal to the JAX simulation), and the
    client app carries no noise key and no simulation object to the nodes."""
    _fake_flwr(monkeypatch)
    from dpjax.federated import flower

    params = jnp.zeros(2)
    sim_f, sim_j = _sim(4.0, users=8), _sim(4.0, users=8)
    strat = flower.strategy(sim_f, params)
    app = flower.client_app(sim_f, params)
    grid = types.SimpleNamespace(get_node_ids=lambda: list(range(8)))
    arrays = _Arrays(jax.tree.leaves(params))
    recorded_when_clients_ran = []
    for r in (1, 2, 3):
        messages = strat.configure_train(r, arrays, None, grid)
        replies = []
        for node, msg in enumerate(messages):
            recorded_when_clients_ran.append(_rounds_recorded(sim_f.tracker))
            ctx = types.SimpleNamespace(node_config={"partition-id": node})
            replies.append(app.train_fn(msg, ctx))
        arrays, _ = strat.aggregate_train(r, replies)
    assert recorded_when_clients_ran == [1] * 8 + [2] * 8 + [3] * 8
    w = sim_j.init(params)
    epsilons = []
    for _ in range(3):
        w, result = sim_j.round(w)
        epsilons.append(result.epsilon)
    np.testing.assert_allclose(np.asarray(strat.params), np.asarray(w), rtol=1e-5, atol=1e-6)
    assert strat.epsilons == pytest.approx(epsilons, rel=1e-12)
    noise = [
        s
        for s in jax.tree.leaves(
            sim_f.opt_state, is_leaf=lambda s: isinstance(s, dpjax.GaussianNoiseState)
        )
        if isinstance(s, dpjax.GaussianNoiseState)
    ]
    assert [int(s.count) for s in noise] == [3]  # one draw per round, at the server
    key_words = np.asarray(jax.random.key_data(sim_f.key))
    for cell in app.train_fn.__closure__:
        value = cell.cell_contents
        assert not isinstance(value, FederatedSimulation)
        if isinstance(value, np.ndarray) and value.shape == key_words.shape:
            assert not np.array_equal(value, key_words)


def test_reinitializing_after_a_round_is_refused_so_no_round_redraws_released_noise():
    # Finding (fixed): init() after a round rebuilt the noise state, restarting its step counter
    # at 0 while the round index and the account went on: the next round redrew round 0's noise.
    sim = _sim(5)
    w = sim.init(jnp.zeros(2))
    w, _ = sim.round(w)
    with pytest.raises(ValueError, match="reuse the noise"):
        sim.init(w)
    # A user's data set size stays out of the data's repr (sizes are not private).
    fed = synthetic_federated_data(num_users=4, dim=2, seed=3)
    sizes = {str(s) for s in fed.user_sizes}
    assert "sizes" not in repr(fed) and "users" in repr(fed)
    assert not any(f"{s}.." in repr(fed) for s in sizes)
