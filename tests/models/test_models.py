"""Tests for dpjax.models: shapes, the published DP CNN, BatchNorm refusal, vmap."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from dpjax.models import (
    DPCNN,
    MODEL_NAMES,
    FunctionalModel,
    GroupNormCNN,
    LinenCNN,
    _models,
    check_no_batchnorm,
    functional,
    make_model,
)

_TOL = 1e-5  # float32 models; batched and per-example paths do the same arithmetic


def _shape_for(name):
    return (28, 28, 1) if name in ("cnn", "linen-cnn") else (8, 8, 1)


def _num_params(params):
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.fixture(scope="module", params=MODEL_NAMES)
def built(request):
    name = request.param
    shape = _shape_for(name)
    fm = make_model(name, shape, 10, seed=0)
    x = jax.random.uniform(jax.random.key(1), (3, *shape))
    return name, fm, x


def test_every_model_gives_batched_logits_under_jit(built):
    _, fm, x = built
    assert isinstance(fm, FunctionalModel)
    logits = jax.jit(fm.apply)(fm.params, x)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(logits, fm.apply(fm.params, x), atol=_TOL)


def test_vmapped_single_example_apply_equals_batched_apply(built):
    _, fm, x = built
    per_example = jax.jit(jax.vmap(lambda p, xi: fm.apply(p, xi[None])[0], in_axes=(None, 0)))
    np.testing.assert_allclose(per_example(fm.params, x), fm.apply(fm.params, x), atol=_TOL)


def test_vmapped_per_example_grads_equal_one_at_a_time_grads(built):
    _, fm, x = built
    y = jnp.arange(x.shape[0]) % 10

    def loss(p, xi, yi):
        return -jax.nn.log_softmax(fm.apply(p, xi[None])[0])[yi]

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(fm.params, x, y)
    for i in range(x.shape[0]):
        one = jax.grad(loss)(fm.params, x[i], y[i])
        jax.tree.map(lambda g, o, i=i: np.testing.assert_allclose(g[i], o, atol=_TOL), grads, one)


def test_make_model_is_seeded():
    a, b, c = (make_model("mlp", (8, 8, 1), 10, seed=s) for s in (0, 0, 1))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert not np.array_equal(a.params["head"]["kernel"], c.params["head"]["kernel"])


def test_dpcnn_matches_published_architecture():
    # Hand count for 1 input channel and 10 classes:
    #   conv1 8*8*1*16 + 16   =  1,040
    #   conv2 4*4*16*32 + 32  =  8,224
    #   fc1   (4*4*32)*32 + 32 = 16,416
    #   fc2   32*10 + 10      =    330
    #   total                 = 26,010
    model = DPCNN(rngs=nnx.Rngs(0))
    x = jnp.zeros((2, 28, 28, 1))
    h = model.conv1(x)
    assert h.shape == (2, 13, 13, 16)  # (28 + 2*2 - 8) // 2 + 1 = 13
    h = nnx.max_pool(h, (2, 2), strides=(1, 1))
    assert h.shape == (2, 12, 12, 16)
    h = model.conv2(h)
    assert h.shape == (2, 5, 5, 32)  # (12 - 4) // 2 + 1 = 5
    h = nnx.max_pool(h, (2, 2), strides=(1, 1))
    assert h.shape == (2, 4, 4, 32)
    assert model(x).shape == (2, 10)
    fm = functional(model)
    assert _num_params(fm.params) == 26_010
    assert jax.tree.map(jnp.shape, fm.params) == {
        "conv1": {"kernel": (8, 8, 1, 16), "bias": (16,)},
        "conv2": {"kernel": (4, 4, 16, 32), "bias": (32,)},
        "fc1": {"kernel": (512, 32), "bias": (32,)},
        "fc2": {"kernel": (32, 10), "bias": (10,)},
    }


def test_linen_cnn_computes_the_same_function_as_dpcnn():
    nnx_fm = functional(DPCNN(rngs=nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    linen_fm = functional(LinenCNN(), sample_input=x, key=jax.random.key(0))
    assert _num_params(linen_fm.params) == 26_010
    renamed = {
        "Conv_0": nnx_fm.params["conv1"],
        "Conv_1": nnx_fm.params["conv2"],
        "Dense_0": nnx_fm.params["fc1"],
        "Dense_1": nnx_fm.params["fc2"],
    }
    np.testing.assert_allclose(
        linen_fm.apply(renamed, x), nnx_fm.apply(nnx_fm.params, x), atol=_TOL
    )


def test_groupnorm_cnn_param_count_and_any_input_size():
    # conv1 3*3*1*32+32 = 320; gn1 2*32 = 64; conv2 3*3*32*64+64 = 18,496;
    # gn2 2*64 = 128; head 64*10+10 = 650; total 19,658.
    model = GroupNormCNN(10, 1, rngs=nnx.Rngs(0))
    assert _num_params(functional(model).params) == 19_658
    for size in (8, 28):
        assert model(jnp.zeros((2, size, size, 1))).shape == (2, 10)


def test_cnn_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="28x28.*'gn-cnn'"):
        make_model("cnn", (8, 8, 1), 10, seed=0)
    with pytest.raises(ValueError, match=r"x.shape=\(1, 8, 8, 1\)"):
        DPCNN(rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 1)))


def test_make_model_unknown_name_lists_names():
    with pytest.raises(ValueError) as info:
        make_model("resnet", (8, 8, 1), 10, seed=0)
    assert all(repr(name) in str(info.value) for name in MODEL_NAMES)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (8, 8)}, "input_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"seed": -1}, "seed"),
    ],
)
def test_make_model_validates_arguments(kwargs, match):
    args = {"name": "mlp", "input_shape": (8, 8, 1), "num_classes": 10, "seed": 0} | kwargs
    seed = args.pop("seed")
    with pytest.raises(ValueError, match=match):
        make_model(**args, seed=seed)


# ------------------------------------------------------------ BatchNorm


class _NNXWithBatchNorm(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List(
            [nnx.Linear(64, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)]
        )

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = layer(x)
        return x


class _LinenWithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8)(x.reshape(x.shape[0], -1))
        return nn.BatchNorm(use_running_average=False)(x)


def test_check_no_batchnorm_names_nnx_layer_path():
    with pytest.raises(ValueError, match=r"layers/2 \(nnx.BatchNorm\).*GroupNorm"):
        check_no_batchnorm(_NNXWithBatchNorm(nnx.Rngs(0)))


def test_check_no_batchnorm_names_linen_layer_path():
    with pytest.raises(ValueError, match=r"BatchNorm_0 \(nn.BatchNorm\).*GroupNorm"):
        check_no_batchnorm(_LinenWithBatchNorm(), sample_input=jnp.zeros((2, 8, 8, 1)))


def test_check_no_batchnorm_linen_needs_sample_input():
    with pytest.raises(ValueError, match="sample_input"):
        check_no_batchnorm(_LinenWithBatchNorm())


def test_check_no_batchnorm_flags_custom_batch_statistics():
    class RunningMean(nnx.Module):
        def __init__(self):
            self.mean = nnx.BatchStat(jnp.zeros(4))

    class Model(nnx.Module):
        def __init__(self):
            self.custom = RunningMean()

    with pytest.raises(ValueError, match=r"custom/mean \(nnx.BatchStat\)"):
        check_no_batchnorm(Model())


def test_check_no_batchnorm_reads_param_names_of_a_pytree():
    params = {"Dense_0": {"kernel": jnp.zeros((2, 2))}, "BatchNorm_0": {"scale": jnp.ones(2)}}
    with pytest.raises(ValueError, match="BatchNorm_0/scale"):
        check_no_batchnorm(FunctionalModel(apply=lambda p, x: x, params=params))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_check_no_batchnorm_passes_dpjax_models(name):
    check_no_batchnorm(make_model(name, _shape_for(name), 10, seed=0))


def test_functional_refuses_batchnorm():
    with pytest.raises(ValueError, match="layers/2"):
        functional(_NNXWithBatchNorm(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="BatchNorm_0"):
        functional(
            _LinenWithBatchNorm(), sample_input=jnp.zeros((2, 8, 8, 1)), key=jax.random.key(0)
        )


# ------------------------------------------------------------ functional


def test_functional_rejects_stored_random_streams():
    class WithDropout(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 4, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

    with pytest.raises(ValueError, match="random streams at dropout"):
        functional(WithDropout(nnx.Rngs(0)))


def test_functional_linen_needs_sample_input_and_key():
    module = _models.LinenMLP(num_classes=10)
    with pytest.raises(ValueError, match="sample_input"):
        functional(module, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key=None"):
        functional(module, sample_input=jnp.zeros((1, 8, 8, 1)))


def test_functional_rejects_other_objects():
    with pytest.raises(ValueError, match="neither an nnx.Module nor a flax.linen.Module"):
        functional(lambda x: x)


def test_docstring_examples_run():
    result = doctest.testmod(_models, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_dpcnn_max_pool_is_nnx_max_pool_with_the_same_gradient():
    x = jax.random.normal(jax.random.key(3), (2, 13, 13, 4))  # continuous: no ties

    def reference(v):
        return nnx.max_pool(v, (2, 2), strides=(1, 1))

    ours = _models._max_pool_2x2_stride_1
    np.testing.assert_array_equal(jax.jit(ours)(x), reference(x))
    weights = jax.random.normal(jax.random.key(4), (2, 12, 12, 4))
    grad_ours = jax.jit(jax.grad(lambda v: jnp.sum(ours(v) * weights)))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(reference(v) * weights))(x)
    np.testing.assert_allclose(grad_ours, grad_ref, atol=1e-6)
