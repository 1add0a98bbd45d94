"""DP federated averaging: client influence, noise once per round, the user-level account."""

import json
import math
import warnings

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting.pld import PLDAccountant
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import dpjax
from dpjax.federated import (
    CentralDP,
    FederatedSimulation,
    LocalDP,
    LocalSGD,
    NotPrivateFedAvg,
    calibrate_local_noise,
    client_batch,
    dirichlet_split,
    federated_data,
    local_dp_epsilon,
    make_round,
    round_release,
    synthetic_federated_data,
)

C = 0.7


def _sq_loss(w, x, y):
    return (x @ w - y) ** 2


def _not_private():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        return NotPrivateFedAvg()


# --- invariant 1: one client moves the server update by at most C / n --------------------------


_CENTRAL = CentralDP(C, 1.0).aggregator(3.0, jax.random.key(0))
_CENTRAL_UPDATE = jax.jit(lambda g, s, m: _CENTRAL.update(g, s, mask=m)[0])


@given(
    scales=st.lists(
        st.one_of(st.floats(0.0, 1e30), st.sampled_from([math.inf, math.nan])),
        min_size=6,
        max_size=6,
    ),
    present=st.lists(st.booleans(), min_size=6, max_size=6),
    who=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_one_client_moves_the_central_update_by_at_most_c(scales, present, who, seed):
    # Any clients (huge, NaN, inf, padded): removing one moves the noisy mean by <= C / n.
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(6, 5)).astype(np.float32) * np.asarray(scales, np.float32)[:, None]
    state = _CENTRAL.init(jnp.zeros(5))
    mask = np.array(present)
    mask[who] = True
    with_client = _CENTRAL_UPDATE(jnp.asarray(rows), state, jnp.asarray(mask))
    mask[who] = False
    without = _CENTRAL_UPDATE(jnp.asarray(rows), state, jnp.asarray(mask))  # same noise draw
    moved = float(jnp.linalg.norm(with_client - without)) * 3.0
    assert math.isfinite(moved) and moved <= C * (1 + 1e-5)


def test_one_user_moves_a_whole_round_by_at_most_c():
    # Through local training: a user with extreme data changes the server step by <= C / n.
    fed = synthetic_federated_data(num_users=4, dim=3, seed=0)
    local = LocalSGD(_sq_loss, learning_rate=1e-3, epochs=2, batch_size=4)
    n = 4.0
    tx = optax.chain(CentralDP(C, 1.0).aggregator(n, jax.random.key(0)), optax.sgd(1.0))
    step = jax.jit(make_round(local, tx))
    x = jnp.asarray(fed.train.x) * 30.0  # updates far beyond C, still finite
    y = jnp.asarray(fed.train.y, jnp.float32)
    w = jnp.zeros(3)
    ids = np.arange(4)
    full = client_batch(fed.users, ids, np.ones(4, bool), 4)
    drop = client_batch(fed.users, ids, np.array([True, False, True, True]), 4)
    drop = drop._replace(indices=full.indices)  # same shapes: only the mask differs
    a, _ = step(w, tx.init(w), x, y, full, jax.random.key(1))
    b, _ = step(w, tx.init(w), x, y, drop, jax.random.key(1))
    assert 0 < float(jnp.linalg.norm(a - b)) * n <= C * (1 + 1e-5)


_LOCAL_SIGMA, _D = 0.8, 20_000
_LOCAL = LocalDP(C, _LOCAL_SIGMA).aggregator(1.0, jax.random.key(4))
_LOCAL_UPDATE = jax.jit(lambda g, s, m: _LOCAL.update(g, s, mask=m)[0])


def test_local_dp_padded_and_absent_clients_send_nothing():
    # A NaN client sends noise only; a padded (masked) client sends nothing at all.
    rows = jnp.zeros((3, _D)).at[1].set(jnp.nan).at[2].set(1e9)
    out = _LOCAL_UPDATE(rows, _LOCAL.init(jnp.zeros(_D)), jnp.array([True, True, False]))
    assert bool(jnp.all(jnp.isfinite(out)))
    expected = math.sqrt(2) * _LOCAL_SIGMA * 2 * C  # two real clients' noise, no 1e9
    assert abs(float(jnp.std(out)) / expected - 1) < 0.03


# --- invariant 2: noise once per round, std sigma * C on the sum --------------------------------


def test_central_noise_is_drawn_once_per_round_with_std_sigma_c():
    sigma, n, d = 1.3, 5.0, 20_000
    tx = CentralDP(C, sigma).aggregator(n, jax.random.key(3))
    update = jax.jit(lambda g, s, m: tx.update(g, s, mask=m))
    state = tx.init(jnp.zeros(d))
    zeros, mask = jnp.zeros((4, d)), jnp.ones(4, bool)
    first, state = update(zeros, state, mask)
    second, state = update(zeros, state, mask)
    noise = np.asarray(first) * n  # the sum's noise: ONE draw of std sigma * C, whatever K is
    assert stats.kstest(noise / (sigma * C), "norm").pvalue > 1e-3
    assert abs(noise.std() / (sigma * C) - 1) < 0.03
    assert abs(np.corrcoef(np.asarray(first), np.asarray(second))[0, 1]) < 0.05  # fresh key
    noise_states = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, dpjax.GaussianNoiseState))
        if isinstance(s, dpjax.GaussianNoiseState)
    ]
    assert [int(s.count) for s in noise_states] == [2]  # one noise stage, two rounds, two draws


def test_local_noise_is_one_draw_per_client_with_std_sigma_2c():
    k = 3
    out = _LOCAL_UPDATE(jnp.zeros((k, _D)), _LOCAL.init(jnp.zeros(_D)), jnp.ones(k, bool))
    expected = math.sqrt(k) * _LOCAL_SIGMA * 2 * C  # k independent client draws, sensitivity 2C
    assert stats.kstest(np.asarray(out) / expected, "norm").pvalue > 1e-3


# --- invariant 4: the account --------------------------------------------------------------------


@pytest.mark.parametrize("clients", [3.0, 8.0])
def test_simulation_account_equals_dp_accounting(clients):
    fed = synthetic_federated_data(num_users=8, dim=3, seed=1)
    sigma, rounds = 1.5, 3
    sim = FederatedSimulation(
        fed,
        LocalSGD(_sq_loss, 0.1, batch_size=8),
        CentralDP(C, sigma),
        optax.sgd(1.0),
        clients_per_round=clients,
        key=jax.random.key(0),
        seed=0,
        delta=1e-3,
    )
    w = sim.init(jnp.zeros(3))
    epsilons = []
    for _ in range(rounds):
        w, result = sim.round(w)
        epsilons.append(result.epsilon)
    q = clients / 8
    step = (
        dp_accounting.GaussianDpEvent(sigma)  # full participation: no amplification claimed
        if q == 1
        else dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    )
    acc = PLDAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(step, rounds))
    assert epsilons[-1] == pytest.approx(acc.get_epsilon(1e-3), rel=1e-2)
    assert epsilons == sorted(epsilons) and epsilons[0] > 0  # reported after every round
    expected = dpjax.GaussianRelease if q == 1 else dpjax.PoissonGaussianSteps
    assert all(isinstance(r, expected) for r in sim.tracker.releases)


def test_full_participation_is_a_gaussian_release_and_subsampling_is_poisson():
    assert round_release(1.0, 1.0) == dpjax.GaussianRelease(1.0)
    assert round_release(1.0, 0.1) == dpjax.PoissonGaussianSteps(1.0, 0.1)


def test_budget_is_checked_before_the_round():
    fed = synthetic_federated_data(num_users=6, dim=2, seed=0)
    sim = FederatedSimulation(
        fed,
        LocalSGD(_sq_loss, 0.1, batch_size=8),
        CentralDP(C, 0.5),
        optax.sgd(1.0),
        clients_per_round=6,
        key=jax.random.key(0),
        seed=0,
        delta=1e-3,
        target_epsilon=0.5,
    )
    w = sim.init(jnp.zeros(2))
    with pytest.raises(dpjax.BudgetExceededError):
        sim.round(w)
    assert sim.round_index == 0 and not sim.tracker.releases


def test_local_dp_composes_through_the_accountant_not_by_summing():
    sigma, delta = 4.0, 1e-5
    one, ten = local_dp_epsilon(sigma, 1, delta), local_dp_epsilon(sigma, 10, delta)
    acc = PLDAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), 10))
    assert ten == pytest.approx(acc.get_epsilon(delta), rel=1e-2)
    assert ten < 10 * one / 2  # far below the naive sum
    s = calibrate_local_noise(3.0, 10, delta)
    assert local_dp_epsilon(s, 10, delta) <= 3.0 < local_dp_epsilon(s * 0.97, 10, delta)


def test_local_dp_clients_stop_at_their_own_budget():
    fed = synthetic_federated_data(num_users=4, dim=2, seed=0)
    sigma = 2.0
    target = local_dp_epsilon(sigma, 2, 1e-3) * 1.001
    sim = FederatedSimulation(
        fed,
        LocalSGD(_sq_loss, 0.1, batch_size=8),
        LocalDP(C, sigma),
        optax.sgd(1.0),
        clients_per_round=4,
        key=jax.random.key(0),
        seed=0,
        delta=1e-3,
        target_epsilon=target,
    )
    w = sim.init(jnp.zeros(2))
    counts = [sim.round(w)[1].num_clients for _ in range(3)]
    assert sim.max_participations == 2 and counts == [4, 4, 0]
    assert sim.epsilon() <= target


# --- NOT PRIVATE mode equals a hand-written FedAvg --------------------------------------------


def test_not_private_fedavg_matches_a_hand_written_reference():
    fed = synthetic_federated_data(num_users=5, dim=3, mean_examples=6, seed=2)
    batch = 32  # >= every client's size: one full-batch step per epoch, order-free
    assert max(len(u) for u in fed.users) <= batch
    lr, epochs, rounds = 0.05, 3, 2
    sim = FederatedSimulation(
        fed,
        LocalSGD(_sq_loss, lr, epochs=epochs, batch_size=batch),
        _not_private(),
        optax.sgd(1.0),
        clients_per_round=5,
        key=jax.random.key(0),
        seed=0,
    )
    w = sim.init(jnp.zeros(3))
    for _ in range(rounds):
        w, result = sim.round(w)
    assert result.epsilon == math.inf

    x, y = np.asarray(fed.train.x, np.float64), np.asarray(fed.train.y, np.float64)
    ref = np.zeros(3)
    for _ in range(rounds):
        locals_ = []
        for idx in fed.users:
            v = ref.copy()
            for _ in range(epochs):
                v -= lr * 2 * x[idx].T @ (x[idx] @ v - y[idx]) / len(idx)
            locals_.append(v)
        ref = np.mean(locals_, axis=0)  # FedAvg: server SGD with lr 1 on the mean delta
    np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-4, atol=1e-5)


# --- validation and data ------------------------------------------------------------------------


def test_invalid_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="noise_multiplier"):
        CentralDP(1.0, 0.0)
    with pytest.raises(ValueError, match="l2_norm"):
        LocalDP(math.inf, 1.0)
    with pytest.raises(ValueError, match="epochs"):
        LocalSGD(_sq_loss, 0.1, epochs=0)
    with pytest.warns(dpjax.NotPrivateWarning):
        NotPrivateFedAvg()
    fed = synthetic_federated_data(num_users=3, dim=2)
    with pytest.raises(ValueError, match="clients_per_round"):
        FederatedSimulation(
            fed, LocalSGD(_sq_loss, 0.1), CentralDP(1.0, 1.0), optax.sgd(1.0), 5,
            key=jax.random.key(0), seed=0,
        )  # fmt: skip


def test_dirichlet_split_is_a_seeded_non_iid_partition_of_unequal_users():
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_split(labels, num_users=50, alpha=0.3, seed=7)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(1000))
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1 and sizes.max() > 3 * sizes.min()
    classes = np.array([len(np.unique(labels[p])) for p in parts])
    assert np.median(classes) < 8  # skewed labels
    again = dirichlet_split(labels, num_users=50, alpha=0.3, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(labels, 5, alpha=0.0, seed=0)


def test_real_and_synthetic_federated_data_are_labelled():
    fed = federated_data("digits", num_users=30, alpha=1.0, seed=0)
    assert not fed.synthetic and fed.num_users == 30 and "digits" in fed.source
    assert fed.user_sizes.sum() == len(fed.train)
    syn = synthetic_federated_data(num_users=4)
    assert syn.synthetic and syn.source.startswith("SYNTHETIC")


def test_clients_are_padded_to_few_shapes():
    users = [np.arange(n) for n in (1, 5, 9, 17, 33)]
    widths = {
        client_batch(users, np.array([i]), np.ones(1, bool), 8).indices.shape[1] for i in range(5)
    }
    assert widths == {8, 16, 32, 64}  # 8 * 2**k: one compile per bucket, not per size


def test_cli_runs_a_federated_simulation_and_refuses_a_zero_noise(capsys):
    from dpjax.training._cli import main

    args = ["federated", "--rounds", "1", "--users", "10", "--clients-per-round", "5"]
    assert main([*args, "--noise-multiplier", "1", "--l2-norm", "0.5", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    q = 0.5
    direct = dpjax.compute_epsilon(1.0, 1, q, record["delta"])
    assert record["epsilon"] == pytest.approx(direct, rel=1e-6) and record["sampling_rate"] == q
    assert main([*args, "--noise-multiplier", "0"]) == 2
    assert "noise_multiplier=0.0" in capsys.readouterr().err
