"""Ghost clipping refuses models that mix examples, and needs the padding mask.

Ghost clipping computes each example's gradient norm from every ghost layer's
input and output gradient in that example's row. That bounds the example's
contribution only if its loss and those rows depend on it alone. Each case below
is a pair: a model that keeps examples apart (accepted, and its ghost sum equals
clipping per-example gradients) and its twin that mixes them (refused).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dpjax
import dpjax.ghost

_ROWS = 6  # examples per batch in these tests


class _Case(NamedTuple):
    losses: Callable[[Any, Any], jax.Array]  # (params, batch) -> (B,) losses
    params: Any
    batch: Callable[[jax.Array, int], Any]  # (key, rows) -> a random batch


class _Mlp(nnx.Module):
    """GhostLinear -> tanh -> GhostLinear; `centre` subtracts the batch's mean input first."""

    def __init__(self, rngs, centre=False):
        self.centre = centre
        self.l1 = dpjax.ghost.GhostLinear(4, 8, rngs=rngs)
        self.l2 = dpjax.ghost.GhostLinear(8, 3, rngs=rngs)

    def __call__(self, x):
        if self.centre:
            x = x - x.mean(axis=0, keepdims=True)
        return self.l2(jnp.tanh(self.l1(x)))


class _Bag(nnx.Module):
    """GhostEmbed -> mean over the tokens -> GhostLinear."""

    def __init__(self, rngs):
        self.embed = dpjax.ghost.GhostEmbed(7, 4, rngs=rngs)
        self.head = dpjax.ghost.GhostLinear(4, 3, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.embed(tokens).mean(axis=1))


def _images(key, rows):
    kx, ky = jax.random.split(key)
    return 3.0 * jax.random.normal(kx, (rows, 4)), jax.random.randint(ky, (rows,), 0, 3)


def _mlp_case(mix: bool, head: Callable) -> _Case:
    """The MLP on `_images`, with `head(model, x, y, mix) -> losses`."""
    graphdef, params = nnx.split(_Mlp(nnx.Rngs(0)), nnx.Param)

    def losses(p, batch):
        x, y = batch
        return head(nnx.merge(graphdef, p), x, y, mix)

    return _Case(losses, params, _images)


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _centring(mix):
    graphdef, params = nnx.split(_Mlp(nnx.Rngs(0), centre=mix), nnx.Param)
    return _Case(lambda p, b: _ce(nnx.merge(graphdef, p)(b[0]), b[1]), params, _images)


def _loss_minus_mean(model, x, y, mix):
    losses = _ce(model(x), y)
    return losses - (losses.mean() if mix else 1.0)


def _label_counts(model, x, y, mix):  # weights each loss by how often its label occurs
    weight = jnp.sum(y[:, None] == y[None, :], axis=1) if mix else 1 + y
    return _ce(model(x), y) * weight.astype(jnp.float32)


def _softmax_over_rows(model, x, y, mix):  # in-batch contrastive: row i must pick itself
    h = model(x)
    if mix:
        return _ce(h @ h.T, jnp.arange(x.shape[0]))
    return _ce(h, y)


def _batch_max(model, x, y, mix):  # a max over the batch (gradient stopped) or over features
    shift = jax.lax.stop_gradient(x.max(axis=0, keepdims=True)) if mix else x.max(1, keepdims=True)
    return _ce(model(x - shift), y)


def _batch_size(model, x, y, mix):  # divides by the batch size, or by a constant
    return _ce(model(x), y) / (x.shape[0] if mix else 4.0)


def _rolled_tokens(mix):  # row i reads row i - 1's tokens: mixing through integers only
    graphdef, params = nnx.split(_Bag(nnx.Rngs(0)), nnx.Param)

    def losses(p, batch):
        tokens, y = batch
        tokens = jnp.roll(tokens, 1, axis=0) if mix else tokens
        return _ce(nnx.merge(graphdef, p)(tokens), y)

    def batch(key, rows):
        kt, ky = jax.random.split(key)
        return jax.random.randint(kt, (rows, 5), 0, 7), jax.random.randint(ky, (rows,), 0, 3)

    return _Case(losses, params, batch)


def _shared_layer_output(mix):  # a ghost layer on constant rows, averaged over the batch
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w": 0.5 * jax.random.normal(k1, (4, 3)), "u": jax.random.normal(k2, (1, 3))}

    def losses(p, batch):
        x, y = batch
        bias = dpjax.ghost.ghost_dense(jnp.ones((x.shape[0], 1)), p["u"])
        bias = jnp.broadcast_to(bias.mean(axis=0), bias.shape) if mix else bias
        return _ce(dpjax.ghost.ghost_dense(x, p["w"]) + bias, y)

    return _Case(losses, params, _images)


_CASES: dict[str, Callable[[bool], _Case]] = {
    "batch-mean-centring": _centring,
    "loss-minus-mean-loss": functools.partial(_mlp_case, head=_loss_minus_mean),
    "label-counts": functools.partial(_mlp_case, head=_label_counts),
    "softmax-over-rows": functools.partial(_mlp_case, head=_softmax_over_rows),
    "stop-gradient-batch-max": functools.partial(_mlp_case, head=_batch_max),
    "batch-size": functools.partial(_mlp_case, head=_batch_size),
    "rolled-tokens": _rolled_tokens,
    "shared-layer-output": _shared_layer_output,
}


@functools.cache
def _case(name: str, mix: bool) -> _Case:
    return _CASES[name](mix)


@functools.cache
def _ghost_sum(name: str, mix: bool, c: float):
    """The jitted ghost clipped sum of a case, or None if ghost clipping refuses the model."""
    case = _case(name, mix)
    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(case.losses, l2_norm=c))
    try:
        clipped(case.params, case.batch(jax.random.key(0), _ROWS), jnp.ones(_ROWS, bool))
    except ValueError as e:
        assert "dpjax.per_example_grads (vmap)" in str(e)
        return None
    return clipped


def _distance(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return float(np.sqrt(sum(np.sum((np.float64(u) - np.float64(v)) ** 2) for u, v in leaves)))


def _vmap_clipped_sum(case: _Case, batch, mask, c: float):
    """Each example's gradient, evaluated alone, clipped to c in float64 and summed over `mask`."""

    def one(p, example):
        return case.losses(p, jax.tree.map(lambda v: v[None], example))[0]

    grads = jax.tree.map(np.float64, dpjax.per_example_grads(one)(case.params, batch))
    leaves = jax.tree.leaves(grads)
    norms = np.sqrt(sum(np.sum(g.reshape(len(g), -1) ** 2, axis=1) for g in leaves))
    scale = np.where(np.asarray(mask), np.minimum(1.0, c / norms), 0.0)
    return jax.tree.map(lambda g: np.tensordot(scale, g, axes=1), grads)


# --- refusal, and no false positives ---------------------------------------------------------


@pytest.mark.parametrize("name", list(_CASES))
def test_a_model_that_mixes_examples_is_refused_and_its_twin_is_accepted(name):
    mixing, twin = _case(name, True), _case(name, False)
    batch = mixing.batch(jax.random.key(1), _ROWS)
    assert not dpjax.ghost.is_ghost_compatible(mixing.losses, mixing.params, batch)
    with pytest.raises(ValueError, match=r"mixes examples(.|\n)*dpjax\.per_example_grads \(vmap\)"):
        jax.jit(dpjax.ghost.ghost_clipped_grads(mixing.losses, l2_norm=1.0))(
            mixing.params, batch, jnp.ones(_ROWS, bool)
        )

    assert dpjax.ghost.is_ghost_compatible(twin.losses, twin.params, batch)
    mask = jnp.arange(_ROWS) != 2
    got = _ghost_sum(name, False, 1.0)(twin.params, batch, mask).sum
    want = _vmap_clipped_sum(twin, batch, mask, 1.0)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def _standard_model(name, zero=False):
    shape = (28, 28, 1) if name == "cnn" else (8, 8, 1)
    fm = dpjax.make_model(name, shape, 10, seed=0)
    params = jax.tree.map(jnp.zeros_like, fm.params) if zero else fm.params
    batch = (jax.random.uniform(jax.random.key(1), (16, *shape)), jnp.arange(16) % 10)
    return fm.apply, params, batch


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn", "linen-mlp"])
def test_the_standard_ghost_models_are_accepted(name):
    apply, params, batch = _standard_model(name)

    def losses(p, batch):
        return _ce(apply(p, batch[0]), batch[1])

    assert dpjax.ghost.is_ghost_compatible(losses, params, batch)
    summed = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0))(
        params, batch, jnp.ones(16, bool)
    ).sum
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(summed))


@pytest.mark.parametrize("centre", [False, True], ids=["plain", "centred"])
def test_the_probe_draws_its_own_parameters(centre):
    # With zero weights a logistic regression ignores its input, so a probe with the model's
    # own parameters could not see the centring; the probe draws random ones.
    apply, params, batch = _standard_model("logreg", zero=True)

    def losses(p, batch):
        x = batch[0] - batch[0].mean(axis=0, keepdims=True) if centre else batch[0]
        return _ce(apply(p, x), batch[1])

    assert dpjax.ghost.is_ghost_compatible(losses, params, batch) is not centre


def test_a_model_that_needs_the_real_batch_size_is_probed_at_that_size():
    # The model reshapes to exactly 8 rows: the probe cannot use 3 rows, and falls back to 8.
    params = {"w": jax.random.normal(jax.random.key(0), (6, 2))}

    def losses(p, x):
        return jnp.sum(dpjax.ghost.ghost_dense(x.reshape(8, 6), p["w"]) ** 2, axis=1)

    x = jnp.ones((8, 6))
    assert dpjax.ghost.is_ghost_compatible(losses, params, x)

    def centred(p, x):
        return losses(p, x - x.mean(axis=0, keepdims=True))

    assert not dpjax.ghost.is_ghost_compatible(centred, params, x)


# --- the guarantee: one example moves the sum by at most 2C, padding by nothing ----------------


@pytest.mark.parametrize("mix", [False, True], ids=["twin", "mixing"])
@pytest.mark.parametrize("name", list(_CASES))
@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 100.0))
def test_replacing_one_example_moves_the_ghost_sum_by_at_most_2c_or_ghost_refuses(
    name, mix, seed, scale
):
    # C = 1; scaling the inputs covers sums with every example clipped and with none.
    c = 1.0
    clipped = _ghost_sum(name, mix, c)
    if clipped is None:  # refused: only a mixing model may be
        assert mix
        return
    case = _case(name, mix)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    batch = case.batch(k1, _ROWS)
    other = case.batch(k2, _ROWS)
    row = int(jax.random.randint(k3, (), 0, _ROWS))
    replaced = jax.tree.map(lambda a, b: a.at[row].set(b[row]), batch, other)
    batch, replaced = (
        jax.tree.map(lambda v: v * scale if jnp.issubdtype(v.dtype, jnp.floating) else v, t)
        for t in (batch, replaced)
    )
    mask = jnp.ones(_ROWS, bool)
    with_it = clipped(case.params, batch, mask).sum
    with_other = clipped(case.params, replaced, mask).sum
    assert _distance(with_it, with_other) <= 2 * c * (1 + 1e-4)


@pytest.mark.parametrize("mix", [False, True], ids=["twin", "mixing"])
@pytest.mark.parametrize("name", list(_CASES))
def test_masked_padding_rows_do_not_change_the_ghost_sum_or_ghost_refuses(name, mix):
    # PoissonSampler pads a batch with masked-out copies of example 0.
    clipped = _ghost_sum(name, mix, 1.0)
    if clipped is None:
        assert mix
        return
    case = _case(name, mix)
    batch = jax.tree.map(lambda v: v[:4], case.batch(jax.random.key(3), _ROWS))
    padded = jax.tree.map(lambda v: jnp.concatenate([v, jnp.repeat(v[:1], _ROWS - 4, 0)]), batch)
    got = clipped(case.params, padded, jnp.arange(_ROWS) < 4).sum
    want = jax.jit(dpjax.ghost.ghost_clipped_grads(case.losses, l2_norm=1.0))(
        case.params, batch, jnp.ones(4, bool)
    ).sum
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_without_the_probe_a_centred_model_breaks_the_bound_that_vmap_keeps(monkeypatch):
    # Why the refusal matters: the norms ghost clipping reads are then not the examples'.
    monkeypatch.setattr(dpjax._ghost, "_check_no_mixing", lambda *args: None)
    case, c = _case("batch-mean-centring", True), 1.0
    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(case.losses, l2_norm=c))
    batch = case.batch(jax.random.key(4), _ROWS)
    replaced = (batch[0].at[0].set(50.0), batch[1])
    mask = jnp.ones(_ROWS, bool)
    ghost_moves = _distance(
        clipped(case.params, batch, mask).sum, clipped(case.params, replaced, mask).sum
    )
    vmap_moves = _distance(
        _vmap_clipped_sum(case, batch, mask, c), _vmap_clipped_sum(case, replaced, mask, c)
    )
    assert vmap_moves <= 2 * c * (1 + 1e-6) < ghost_moves


# --- the mask, and what the probe costs ------------------------------------------------------


def test_the_mask_is_required():
    case = _case("batch-mean-centring", False)
    batch = case.batch(jax.random.key(0), _ROWS)
    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(case.losses, l2_norm=1.0))
    with pytest.raises(ValueError, match=r"mask=None(.|\n)*batch\.mask(.|\n)*jnp\.ones"):
        clipped(case.params, batch, None)
    with pytest.raises(ValueError, match="mask has shape"):
        clipped(case.params, batch, jnp.ones(_ROWS + 1, bool))


def test_the_probe_runs_once_per_shapes_not_per_step():
    case = _case("batch-mean-centring", False)
    calls = []

    def losses(p, batch):
        calls.append(1)
        return case.losses(p, batch)

    clipped = dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0)  # not jitted: every call traces
    batch, mask = case.batch(jax.random.key(0), _ROWS), jnp.ones(_ROWS, bool)
    clipped(case.params, batch, mask)
    first = len(calls)
    clipped(case.params, batch, mask)
    assert len(calls) - first == 2 < first  # the shape check and the step itself; no probe


def test_a_losses_fn_that_closes_over_a_traced_value_is_refused_with_a_reason():
    case = _case("batch-mean-centring", False)
    batch, mask = case.batch(jax.random.key(0), _ROWS), jnp.ones(_ROWS, bool)

    @jax.jit
    def step(params, temperature):
        clipped = dpjax.ghost.ghost_clipped_grads(
            lambda p, b: case.losses(p, b) / temperature, l2_norm=1.0
        )
        return clipped(params, batch, mask).sum

    with pytest.raises(ValueError, match="closes over values traced"):
        step(case.params, 2.0)


def test_a_model_whose_probe_losses_are_not_finite_is_refused():
    # log(x - 2) is NaN on the probe's inputs in [0, 1): mixing cannot be ruled out.
    params = {"w": jnp.ones((4, 2))}

    def losses(p, x):
        return jnp.sum(dpjax.ghost.ghost_dense(jnp.log(x - 2.0), p["w"]), axis=1)

    assert not dpjax.ghost.is_ghost_compatible(losses, params, jnp.full((5, 4), 3.0))
