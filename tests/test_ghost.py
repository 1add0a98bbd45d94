"""Ghost clipping equals clipping materialized per-example gradients, for every row kind."""

import functools

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
import dpjax.models
import dpjax.training
from dpjax._ghost_layers import _ConvSpec


class _Net(nnx.Module):
    def __init__(self, d_in, rngs, bias=True):
        self.l1 = dpjax.ghost.GhostLinear(d_in, 16, rngs=rngs)
        self.l2 = dpjax.ghost.GhostLinear(16, 3, use_bias=bias, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def _problem(x_shape, bias=True, seed=0):
    model = _Net(x_shape[-1], nnx.Rngs(seed), bias)
    graphdef, params = nnx.split(model, nnx.Param)
    x = 3.0 * jax.random.normal(jax.random.key(seed + 1), x_shape)
    y = jnp.arange(x_shape[0]) % 3

    def losses(p, batch):
        logits = nnx.merge(graphdef, p)(batch[0])
        logits = logits.mean(axis=tuple(range(1, logits.ndim - 1))) if logits.ndim > 2 else logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1])

    def one(p, example):
        return losses(p, (example[0][None], example[1][None]))[0]

    return params, (x, y), losses, dpjax.per_example_grads(one)


def _check_equal(params, batch, losses, per_example, mask, c):
    want = jax.jit(lambda p, b, m: dpjax.clip_and_sum(per_example(p, b), c, m))(params, batch, mask)
    got = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=c))(params, batch, mask)
    assert got.sensitivity == want.sensitivity == c
    for a, b in zip(jax.tree.leaves(got.sum), jax.tree.leaves(want.sum), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(int(a) == int(b) for a, b in zip(got.stats, want.stats, strict=True))


@pytest.mark.parametrize(
    "x_shape", [(8, 12), (8, 5, 12), (8, 40, 6)], ids=["dense", "sequence-gram", "sequence-direct"]
)
def test_ghost_equals_vmap_clipping_under_jit(x_shape):
    params, batch, losses, per_example = _problem(x_shape)
    mask = jnp.array([True] * 6 + [False] * 2)
    _check_equal(params, batch, losses, per_example, mask, 0.5)


def test_ghost_without_bias_and_with_no_clipping_needed():
    params, batch, losses, per_example = _problem((6, 12), bias=False)
    _check_equal(params, batch, losses, per_example, jnp.ones(6, bool), 1e3)


def test_nonfinite_rows_contribute_zero_and_are_counted():
    params, (x, y), losses, per_example = _problem((8, 12))
    x = x.at[2].set(jnp.nan).at[5, 0].set(jnp.inf)
    mask = jnp.ones(8, bool)
    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=0.5))(params, (x, y), mask)
    got, stats = clipped.sum, clipped.stats
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(got))
    assert int(stats.num_nonfinite) == 2
    _check_equal(params, (x, y), losses, per_example, mask, 0.5)


# A few clip norms, so that each (model, C) is built once: a build traces, compiles and runs
# the mixing probe; the inputs' scale still varies with every example.
_CLIP_NORMS = st.sampled_from([1e-3, 0.05, 1.0, 10.0])


@functools.cache
def _dense_clipper(model_seed, c):
    params, batch, losses, _ = _problem((5, 12), seed=model_seed)
    return params, batch, jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=c))


@given(seed=st.integers(0, 10_000), c=_CLIP_NORMS)
def test_adding_one_example_moves_the_ghost_sum_by_at_most_c(seed, c):
    params, (x, y), clipped = _dense_clipper(seed % 7, c)
    x = x * (1 + seed % 50)
    with_all = clipped(params, (x, y), jnp.ones(5, bool)).sum
    without = clipped(params, (x, y), jnp.array([True] * 4 + [False])).sum
    diff = jnp.sqrt(
        sum(
            jnp.sum((a - b) ** 2)
            for a, b in zip(jax.tree.leaves(with_all), jax.tree.leaves(without), strict=True)
        )
    )
    assert float(diff) <= c * (1 + 1e-4)


@pytest.mark.standard_promotion  # runs optax.adam
def test_ghost_dense_matches_linen_dense_and_linen_mlp_uses_ghost():
    import flax.linen as nn

    x = jnp.arange(8.0).reshape(2, 4)
    ghost, plain = dpjax.ghost.GhostDense(3), nn.Dense(3)
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ghost.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_allclose(ghost.apply(variables, x), plain.apply(variables, x), rtol=1e-6)
    data = dpjax.load_dataset("digits", seed=0)
    cfg = dict(dataset="digits", model="linen-mlp", steps=3, batch_size=128, seed=0, eval_every=3)
    ghost_run = dpjax.training.train(
        dpjax.training.TrainConfig(**cfg), dataset=data, progress=False
    )
    vmap_run = dpjax.training.train(
        dpjax.training.TrainConfig(**cfg, clipping="vmap"), dataset=data, progress=False
    )
    assert ghost_run.summary["clipping"] == "ghost"
    for a, b in zip(
        jax.tree.leaves(ghost_run.params), jax.tree.leaves(vmap_run.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_ghost_linear_matches_nnx_linear():
    ghost, plain = (
        dpjax.ghost.GhostLinear(4, 3, rngs=nnx.Rngs(0)),
        nnx.Linear(4, 3, rngs=nnx.Rngs(0)),
    )
    x = jnp.arange(8.0).reshape(2, 4)
    np.testing.assert_allclose(ghost(x), plain(x), rtol=1e-6)


class _Mixed(nnx.Module):
    def __init__(self, rngs):
        self.ghost = dpjax.ghost.GhostLinear(12, 4, rngs=rngs)
        self.plain = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.plain(self.ghost(x))


class _Tied(nnx.Module):
    def __init__(self, rngs):
        self.layer = dpjax.ghost.GhostLinear(6, 6, rngs=rngs)

    def __call__(self, x):
        return self.layer(jnp.tanh(self.layer(x)))


@pytest.mark.parametrize("module", [_Mixed, _Tied], ids=["non-ghost-layer", "weight-tying"])
def test_models_whose_norms_would_not_be_bounded_are_refused(module):
    graphdef, params = nnx.split(module(nnx.Rngs(0)), nnx.Param)
    d_in = 12 if module is _Mixed else 6

    def losses(p, batch):
        return jnp.sum(nnx.merge(graphdef, p)(batch) ** 2, axis=-1)

    with pytest.raises(ValueError, match="exactly one ghost layer"):
        jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0))(
            params, jnp.ones((3, d_in)), jnp.ones(3, bool)
        )


@pytest.mark.standard_promotion  # runs optax.adam
def test_trainer_ghost_and_vmap_paths_train_the_same_model():
    data = dpjax.load_dataset("digits", seed=0)
    cfg = dict(dataset="digits", model="mlp", steps=5, batch_size=128, seed=0, eval_every=5)
    ghost = dpjax.training.train(
        dpjax.training.TrainConfig(**cfg, clipping="ghost"), dataset=data, progress=False
    )
    vmap = dpjax.training.train(
        dpjax.training.TrainConfig(**cfg, clipping="vmap"), dataset=data, progress=False
    )
    assert ghost.summary["clipping"] == "ghost" and vmap.summary["clipping"] == "vmap"
    for a, b in zip(jax.tree.leaves(ghost.params), jax.tree.leaves(vmap.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class _TiedPlusShadow(nnx.Module):
    """Ties one ghost layer and hides a same-shaped parameter in a plain matmul."""

    def __init__(self, rngs):
        self.layer = dpjax.ghost.GhostLinear(6, 6, rngs=rngs)
        self.shadow = nnx.Param(jnp.eye(6))
        self.shadow_bias = nnx.Param(jnp.zeros(6))

    def __call__(self, x):
        h = self.layer(jnp.tanh(self.layer(x)))
        return h @ self.shadow[...] + self.shadow_bias[...][None]


def test_same_shaped_uncovered_parameter_cannot_hide_weight_tying():
    # The shapes used (2 kernels, 2 biases of the same shapes) match the parameters', but a
    # parameter outside the ghost layers would escape clipping: the check is on identity.
    graphdef, params = nnx.split(_TiedPlusShadow(nnx.Rngs(0)), nnx.Param)

    def losses(p, batch):
        return jnp.sum(nnx.merge(graphdef, p)(batch) ** 2, axis=-1)

    with pytest.raises(ValueError, match="exactly one"):
        jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0))(
            params, jnp.ones((3, 6)), jnp.ones(3, bool)
        )


# --- convolutions and whole models: book-keeping under jit against an eager loop ---------------


def _eager_clipped_sum(one_loss, params, xs, ys, mask, c):
    """Plain Python: per-example grads one at a time (no jit), clipped and summed in float64."""
    total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    with jax.disable_jit():
        for i in range(len(ys)):
            if not mask[i]:
                continue
            grad = jax.tree.map(np.float64, jax.grad(one_loss)(params, xs[i], ys[i]))
            norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grad)))
            if not np.isfinite(norm):
                continue
            scale = min(1.0, c / norm)
            total = jax.tree.map(lambda t, g, scale=scale: t + scale * g, total, grad)
    return total


def _check_against_eager(apply, params, x, y, mask, c, rtol=2e-4):
    def losses(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, batch[0]), batch[1])

    def one_loss(p, xi, yi):
        return losses(p, (xi[None], yi[None]))[0]

    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=c))(params, (x, y), mask)
    got, stats = clipped.sum, clipped.stats
    want = _eager_clipped_sum(one_loss, params, np.asarray(x), np.asarray(y), np.asarray(mask), c)
    scale = max(float(np.max(np.abs(w))) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)
    return stats


def _ghost_models():
    names = []
    for name in dpjax.models.MODEL_NAMES:
        shape = (28, 28, 1) if "cnn" in name else (8, 8, 1)
        fm = dpjax.make_model(name, shape, 10, seed=0)
        x = jnp.zeros((2, *shape))

        def losses(p, batch, fm=fm):
            return optax.softmax_cross_entropy_with_integer_labels(fm.apply(p, batch[0]), batch[1])

        if dpjax.ghost.is_ghost_compatible(losses, fm.params, (x, jnp.zeros(2, jnp.int32))):
            names.append(name)
    return names


def test_the_standard_models_that_ghost_clipping_covers():
    assert _ghost_models() == ["logreg", "mlp", "cnn", "gn-cnn", "scatter-cnn", "linen-mlp"]


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn", "gn-cnn", "scatter-cnn", "linen-mlp"])
def test_every_ghost_model_under_jit_equals_an_eager_loop_over_single_examples(name, monkeypatch):
    # 7 rows in chunks of 3 (3 + 3 + 1): the per-example loops' remainder is covered too.
    monkeypatch.setattr(dpjax._ghost, "_CHUNK", 3)
    shape = (28, 28, 1) if name == "cnn" else (7, 7, 3) if "-cnn" in name else (8, 8, 1)
    fm = dpjax.make_model(name, shape, 10, seed=0)
    x = 2.0 * jax.random.uniform(jax.random.key(1), (7, *shape))
    x = x.at[4].set(jnp.nan)  # a non-finite row: dropped and counted
    y = jnp.arange(7) % 10
    mask = jnp.array([True, True, False, True, True, True, True])
    stats = _check_against_eager(fm.apply, fm.params, x, y, mask, c=0.1)
    assert int(stats.num_nonfinite) == 1 and int(stats.num_clipped) >= 1


class _ConvNet(nnx.Module):
    """One GhostConv with the given options, then a GhostLinear head on the mean feature."""

    def __init__(self, in_features, kernel_size, rngs, **conv_options):
        self.conv = dpjax.ghost.GhostConv(in_features, 6, kernel_size, rngs=rngs, **conv_options)
        self.head = dpjax.ghost.GhostLinear(6, 3, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.conv(x))
        return self.head(h.mean(axis=tuple(range(1, h.ndim - 1))))


_CONV_CASES = {
    # (input shape of one example, kernel size, options); the comments give the norm path
    "2d-same-stride1": ((9, 9, 2), (3, 3), dict()),  # K*O <= T*(K+O): per-example grads
    "2d-explicit-stride2x1": ((10, 7, 3), (4, 2), dict(strides=(2, 1), padding=((2, 1), (0, 3)))),
    "2d-valid-dilated": ((11, 11, 2), (3, 3), dict(padding="VALID", kernel_dilation=2)),
    "2d-gram": ((4, 4, 16), (3, 3), dict(padding="VALID")),  # T=4, K=144, O=6: ghost norm
    "1d-same-dilated": ((12, 3), (3,), dict(kernel_dilation=(2,))),
    "3d-int-padding": ((5, 6, 4, 2), (2, 3, 2), dict(padding=1, strides=2)),
}


@pytest.mark.parametrize("case", list(_CONV_CASES))
def test_ghost_conv_matches_nnx_conv_and_its_patches_reproduce_the_convolution(case):
    shape, kernel_size, options = _CONV_CASES[case]
    ghost = dpjax.ghost.GhostConv(shape[-1], 6, kernel_size, rngs=nnx.Rngs(0), **options)
    plain = nnx.Conv(shape[-1], 6, kernel_size, rngs=nnx.Rngs(0), **options)
    x = jax.random.normal(jax.random.key(0), (3, *shape))
    np.testing.assert_allclose(ghost(x), plain(x), rtol=1e-5, atol=1e-5)

    # im2col, under jit, against lax.conv: rows @ kernel must equal the convolution.
    conv_options = {k: v for k, v in options.items() if k in ("strides", "padding")}
    conv_options["dilation"] = options.get("kernel_dilation", 1)
    kernel, bias = ghost.kernel[...], ghost.bias[...]

    @jax.jit
    def both(x):
        spec = _ConvSpec.build(
            x.shape, kernel.shape, **{"strides": 1, "padding": "SAME"} | conv_options
        )
        flat = spec.rows(x) @ kernel.reshape(-1, kernel.shape[-1])
        out = spec.apply(x, kernel)
        return out, flat.reshape(out.shape)

    out, flat = both(x)
    np.testing.assert_allclose(flat, out, rtol=1e-5, atol=1e-5)
    full = out + bias.reshape((1,) * (out.ndim - 1) + (-1,))
    np.testing.assert_allclose(full, plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", list(_CONV_CASES))
def test_ghost_conv_clipping_under_jit_equals_an_eager_loop(case, monkeypatch):
    monkeypatch.setattr(dpjax._ghost, "_CHUNK", 4)
    shape, kernel_size, options = _CONV_CASES[case]
    graphdef, params = nnx.split(
        _ConvNet(shape[-1], kernel_size, nnx.Rngs(0), **options), nnx.Param
    )
    x = 3.0 * jax.random.normal(jax.random.key(1), (6, *shape))
    x = x.at[1].set(jnp.inf)
    y = jnp.arange(6) % 3
    mask = jnp.array([True, True, True, True, False, True])
    stats = _check_against_eager(lambda p, v: nnx.merge(graphdef, p)(v), params, x, y, mask, c=0.05)
    assert int(stats.num_nonfinite) == 1


@functools.cache
def _cnn_clipper(model_seed, c):
    graphdef, params = nnx.split(_ConvNet(2, (3, 3), nnx.Rngs(model_seed)), nnx.Param)

    def losses(p, batch):
        logits = nnx.merge(graphdef, p)(batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1])

    return params, jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=c))


@given(seed=st.integers(0, 10_000), c=_CLIP_NORMS)
def test_adding_one_example_moves_the_ghost_cnn_sum_by_at_most_c(seed, c):
    params, clipped = _cnn_clipper(seed % 5, c)
    x = (1 + seed % 30) * jax.random.normal(jax.random.key(seed), (5, 6, 6, 2))
    y = jnp.arange(5) % 3
    with_all = clipped(params, (x, y), jnp.ones(5, bool)).sum
    without = clipped(params, (x, y), jnp.array([True] * 4 + [False])).sum
    diff = np.sqrt(
        sum(
            np.sum((np.float64(a) - np.float64(b)) ** 2)
            for a, b in zip(jax.tree.leaves(with_all), jax.tree.leaves(without), strict=True)
        )
    )
    assert diff <= c * (1 + 1e-4)


@pytest.mark.parametrize(
    "options",
    [
        dict(feature_group_count=2),
        dict(input_dilation=2),
        dict(padding="CIRCULAR"),
        dict(mask=jnp.ones((3, 3, 2, 4))),
        dict(dtype=jnp.bfloat16),
    ],
    ids=["groups", "input-dilation", "circular", "mask", "dtype"],
)
def test_ghost_conv_refuses_options_it_cannot_clip(options):
    with pytest.raises(ValueError, match="GhostConv does not support"):
        dpjax.ghost.GhostConv(2, 4, (3, 3), rngs=nnx.Rngs(0), **options)


@pytest.mark.standard_promotion  # runs optax.adam
@pytest.mark.parametrize(
    ("model", "shape", "examples", "steps", "batch"),
    [("cnn", (28, 28, 1), 600, 3, 64), ("gn-cnn", (7, 7, 3), 300, 2, 32)],
)
def test_trainer_cnn_ghost_and_vmap_paths_train_the_same_model(
    model, shape, examples, steps, batch
):
    data = dpjax.load_dataset("synthetic", seed=0, num_examples=examples, input_shape=shape)
    cfg = dict(
        dataset="synthetic", model=model, steps=steps, batch_size=batch, seed=0, eval_every=steps
    )
    ghost = dpjax.training.train(dpjax.training.TrainConfig(**cfg), dataset=data, progress=False)
    vmap = dpjax.training.train(
        dpjax.training.TrainConfig(**cfg, clipping="vmap"), dataset=data, progress=False
    )
    assert ghost.summary["clipping"] == "ghost" and vmap.summary["clipping"] == "vmap"
    # Three adam steps divide by sqrt(v): float32 rounding of the two sums (seen: 1 of 16,384
    # weights 3.3e-5 apart) is amplified, so the absolute tolerance is a few float32 ulps of lr.
    for a, b in zip(jax.tree.leaves(ghost.params), jax.tree.leaves(vmap.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# --- embeddings, LayerNorm and positional embeddings: a transformer block from ghost layers ----


class _TinyTransformer(nnx.Module):
    """Embedding + learned positions + pre-LN attention block + mean-pooled head."""

    def __init__(self, vocab, seq_len, dim, rngs):
        self.embed = dpjax.ghost.GhostEmbed(vocab, dim, rngs=rngs)
        self.pos = nnx.Param(0.1 * jax.random.normal(rngs.params(), (seq_len, dim)))
        self.ln = dpjax.ghost.GhostLayerNorm(dim, rngs=rngs)
        self.qkv = dpjax.ghost.GhostLinear(dim, 3 * dim, rngs=rngs)
        self.out = dpjax.ghost.GhostLinear(dim, dim, rngs=rngs)
        self.head = dpjax.ghost.GhostLinear(dim, 3, rngs=rngs)

    def __call__(self, tokens):
        x = dpjax.ghost.ghost_scale_shift(self.embed(tokens), shift=self.pos[...])
        q, k, v = jnp.split(self.qkv(self.ln(x)), 3, axis=-1)
        att = jax.nn.softmax(q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]), axis=-1) @ v
        return self.head(jnp.tanh(x + self.out(att)).mean(axis=1))


def test_ghost_embed_and_layernorm_match_flax():
    tokens = jnp.array([[0, 3, 3, 9], [1, 1, 1, 1]])
    ghost, plain = (
        dpjax.ghost.GhostEmbed(10, 4, rngs=nnx.Rngs(0)),
        nnx.Embed(10, 4, rngs=nnx.Rngs(0)),
    )
    np.testing.assert_allclose(ghost(tokens), plain(tokens), rtol=1e-6)
    x = jax.random.normal(jax.random.key(0), (2, 5, 4)) * 3 + 1
    ln, plain_ln = (
        dpjax.ghost.GhostLayerNorm(4, rngs=nnx.Rngs(0)),
        nnx.LayerNorm(4, rngs=nnx.Rngs(0)),
    )
    ln.scale[...] = jnp.arange(1.0, 5.0)
    plain_ln.scale[...] = jnp.arange(1.0, 5.0)
    np.testing.assert_allclose(ln(x), plain_ln(x), rtol=1e-4, atol=1e-5)


def test_ghost_groupnorm_matches_flax():
    x = jax.random.normal(jax.random.key(0), (3, 5, 5, 8)) * 3 + 1
    for groups in (1, 4, 8):
        ghost, plain = (
            dpjax.ghost.GhostGroupNorm(8, num_groups=groups, rngs=nnx.Rngs(0)),
            nnx.GroupNorm(8, num_groups=groups, rngs=nnx.Rngs(0)),
        )
        for layer in (ghost, plain):
            layer.scale[...] = jnp.arange(1.0, 9.0)
            layer.bias[...] = jnp.arange(8.0) / 10
        np.testing.assert_allclose(ghost(x), plain(x), rtol=1e-4, atol=2e-5)
    no_affine = dpjax.ghost.GhostGroupNorm(
        8, num_groups=2, use_scale=False, use_bias=False, rngs=nnx.Rngs(0)
    )
    flax_no_affine = nnx.GroupNorm(
        8, num_groups=2, use_scale=False, use_bias=False, rngs=nnx.Rngs(0)
    )
    np.testing.assert_allclose(no_affine(x), flax_no_affine(x), rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="batch, ..., channels"):
        dpjax.ghost.GhostGroupNorm(8, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones(8))


class _GroupNormBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = dpjax.ghost.GhostConv(3, 8, (3, 3), rngs=rngs)
        self.norm = dpjax.ghost.GhostGroupNorm(8, num_groups=2, rngs=rngs)
        self.head = dpjax.ghost.GhostLinear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.norm(self.conv(x))).mean(axis=(1, 2)))


def test_groupnorm_block_under_jit_equals_an_eager_loop(monkeypatch):
    monkeypatch.setattr(dpjax._ghost, "_CHUNK", 4)
    graphdef, params = nnx.split(_GroupNormBlock(nnx.Rngs(0)), nnx.Param)
    # Non-trivial scale and bias, so their per-example gradients matter to the norms.
    params["norm"]["scale"][...] = jnp.linspace(0.5, 2.0, 8)
    params["norm"]["bias"][...] = jnp.linspace(-0.3, 0.3, 8)
    x = jax.random.normal(jax.random.key(2), (9, 6, 6, 3)) * 2
    y = jnp.arange(9) % 3
    mask = jnp.array([True] * 6 + [False, True, True])
    stats = _check_against_eager(lambda p, v: nnx.merge(graphdef, p)(v), params, x, y, mask, c=0.1)
    assert int(stats.num_clipped) >= 1


def test_transformer_from_ghost_layers_under_jit_equals_an_eager_loop(monkeypatch):
    monkeypatch.setattr(dpjax._ghost, "_CHUNK", 4)
    graphdef, params = nnx.split(_TinyTransformer(11, 6, 8, nnx.Rngs(0)), nnx.Param)
    tokens = jax.random.randint(jax.random.key(1), (9, 6), 0, 11)
    tokens = tokens.at[0].set(jnp.array([2, 2, 2, 5, 5, 2]))  # repeated tokens in one example
    tokens = tokens.at[1, 0].set(-1)  # jnp.take reads row 10: the same row as token 10
    tokens = tokens.at[1, 1].set(10)
    y = jnp.arange(9) % 3
    mask = jnp.array([True] * 7 + [False, True])
    stats = _check_against_eager(
        lambda p, t: nnx.merge(graphdef, p)(t), params, tokens, y, mask, c=0.05
    )
    assert int(stats.num_clipped) >= 1


@pytest.mark.parametrize(
    "scale_shape, shift_shape",
    [(None, None), ((3,), (4,)), ((2, 4, 3), None), ((5,), None)],
    ids=["neither", "mismatched", "no-example-axis", "not-trailing"],
)
def test_ghost_scale_shift_validates_shapes(scale_shape, shift_shape):
    x = jnp.ones((2, 4, 3))
    scale = None if scale_shape is None else jnp.ones(scale_shape)
    shift = None if shift_shape is None else jnp.ones(shift_shape)
    with pytest.raises(ValueError, match="ghost_scale_shift got x of shape"):
        dpjax.ghost.ghost_scale_shift(x, scale, shift)


@pytest.mark.parametrize(
    "build",
    [
        lambda: dpjax.ghost.GhostLayerNorm(4, reduction_axes=(-2, -1), rngs=nnx.Rngs(0)),
        lambda: dpjax.ghost.GhostEmbed(4, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        lambda: dpjax.ghost.GhostGroupNorm(4, num_groups=2, reduction_axes=-1, rngs=nnx.Rngs(0)),
        lambda: dpjax.ghost.GhostGroupNorm(4, num_groups=2, axis_name="i", rngs=nnx.Rngs(0)),
    ],
    ids=["layernorm-axes", "embed-dtype", "groupnorm-axes", "groupnorm-axis-name"],
)
def test_ghost_norm_and_embed_refuse_options_they_cannot_clip(build):
    with pytest.raises(ValueError, match="does not support"):
        build()


# --- found in review: cancellation, integer inputs, batch axis, hidden parameter uses -----------


def _contribution_norm(losses, params, batch, c):
    """Norm of one example's contribution: the clipped sum with it minus without it."""
    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=c))
    b = jax.tree.leaves(batch)[0].shape[0]
    with_all = clipped(params, batch, jnp.ones(b, bool)).sum
    without = clipped(params, batch, jnp.arange(b) != 0).sum
    return np.sqrt(
        sum(
            np.sum((np.float64(a) - np.float64(w)) ** 2)
            for a, w in zip(jax.tree.leaves(with_all), jax.tree.leaves(without), strict=True)
        )
    )


def test_ghost_norm_cancellation_cannot_let_an_example_exceed_c():
    # Two nearly opposite tokens: the float32 Gram terms (~2^40) cancel to 0 exactly, while the
    # true gradient norm is 256. Without the rounding bound the example would pass unclipped.
    x = jnp.zeros((2, 2, 64)).at[0, 0, 0].set(2.0**20 + 2.0**8).at[0, 1, 0].set(-(2.0**20))
    x = x.at[1, :, 1].set(1.0)
    params = {"w": jnp.zeros((64, 64))}

    def losses(p, batch):
        return jnp.sum(dpjax.ghost.ghost_dense(batch, p["w"])[..., 0], axis=1)

    assert _contribution_norm(losses, params, x, c=1.0) <= 1.0 + 1e-4


def test_integer_inputs_are_clipped():
    x = jnp.full((3, 20), 16, jnp.uint8)  # 16^2 wraps to 0 in uint8
    params = {"w": jnp.ones((20, 2)) * 0.01, "b": jnp.zeros(2)}

    def losses(p, batch):
        return jnp.sum(dpjax.ghost.ghost_dense(batch, p["w"], p["b"]) ** 2, axis=1)

    assert _contribution_norm(losses, params, x, c=0.5) <= 0.5 * (1 + 1e-5)
    stats = dpjax.ghost.ghost_clipped_grads(losses, l2_norm=0.5)(params, x, jnp.ones(3, bool)).stats
    assert int(stats.num_clipped) == 3


def test_a_layer_without_the_examples_on_its_first_axis_is_refused():
    params = {"w": jnp.ones((3, 2)), "u": jnp.ones((1, 2))}

    def losses(p, batch):  # a batch-independent ghost layer, broadcast over the examples
        h = dpjax.ghost.ghost_dense(batch, p["w"]) + dpjax.ghost.ghost_dense(
            jnp.ones((1, 1)), p["u"]
        )
        return jnp.sum(h, axis=1)

    with pytest.raises(ValueError, match="first axis"):
        dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0)(
            params, jnp.ones((4, 3)), jnp.ones(4, bool)
        )


class _TiedHead(nnx.Module):
    def __init__(self, rngs):
        self.embed = dpjax.ghost.GhostEmbed(7, 4, rngs=rngs)

    def __call__(self, tokens):
        return self.embed.attend(self.embed(tokens).mean(axis=1))  # the table, used again


def test_a_parameter_also_used_outside_its_ghost_layer_is_refused():
    graphdef, params = nnx.split(_TiedHead(nnx.Rngs(0)), nnx.Param)

    def losses(p, tokens):
        return jax.nn.logsumexp(nnx.merge(graphdef, p)(tokens), axis=-1)

    tokens = jnp.zeros((3, 5), jnp.int32)
    assert not dpjax.ghost.is_ghost_compatible(losses, params, tokens)
    with pytest.raises(ValueError, match="outside them"):
        dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0)(params, tokens, jnp.ones(3, bool))


def test_losses_must_be_one_per_example():
    params, batch, losses, _ = _problem((4, 12))
    with pytest.raises(ValueError, match="one loss per example"):
        dpjax.ghost.ghost_clipped_grads(lambda p, b: losses(p, b).sum(), l2_norm=1.0)(
            params, batch, jnp.ones(4, bool)
        )


def test_an_all_padding_batch_gives_an_exact_zero_sum():
    # PoissonSampler turns an empty draw into one microbatch of masked-out padding.
    params, batch, losses, _ = _problem((4, 12))
    clipped = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0))
    summed = clipped(params, batch, jnp.zeros(4, bool))
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(summed.sum))
    assert int(summed.stats.num_clipped) == 0 and summed.sensitivity == 1.0
