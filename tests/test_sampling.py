"""Poisson sampling: inclusion probability q, nothing dropped, bounded compilations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dpjax


def test_each_example_is_included_with_probability_q():
    n, q, steps = 200, 0.05, 2000
    sampler = dpjax.PoissonSampler(n, expected_batch_size=q * n, seed=0)
    counts = np.zeros(n)
    sizes = []
    for t in range(steps):
        b = sampler.sample(t)
        counts[b.indices[b.mask]] += 1
        sizes.append(b.size)
    assert scipy.stats.binomtest(int(counts.sum()), n * steps, q).pvalue > 1e-3
    # Every example individually ~ Binomial(steps, q): a chi-square test of homogeneity.
    expected = steps * q
    chi2 = (((counts - expected) ** 2) / (expected * (1 - q))).sum()
    assert scipy.stats.chi2.sf(chi2, n - 1) > 1e-3
    # Batch sizes vary (Poisson), they are not fixed.
    assert np.std(sizes) > 1.0


def test_no_example_is_dropped_by_padding_and_large_batches_get_more_microbatches():
    sampler = dpjax.PoissonSampler(1000, expected_batch_size=100, seed=1, microbatch_size=16)
    for t in range(50):
        b = sampler.sample(t)
        assert b.mask.sum() == b.size
        real = b.indices[b.mask]
        assert len(np.unique(real)) == b.size
        assert len(b.indices) % 16 == 0 and len(b.indices) >= b.size
        assert len(b.indices) - b.size < 16
        assert not b.mask[b.size :].any()


def test_same_step_reproduces_and_steps_differ():
    s = dpjax.PoissonSampler(500, expected_batch_size=50, seed=3)
    np.testing.assert_array_equal(s.sample(7).indices, s.sample(7).indices)
    assert not np.array_equal(s.sample(7).indices, s.sample(8).indices)


def test_empty_batch_is_one_microbatch_of_padding():
    s = dpjax.PoissonSampler(1000, expected_batch_size=0.001, seed=0, microbatch_size=4)
    b = s.sample(0)
    assert b.size == 0 and b.indices.shape == (4,) and not b.mask.any()


def test_number_of_compilations_over_100_steps_is_bounded():
    traces = []

    @jax.jit
    def step(x, mask):
        traces.append(x.shape)  # runs only when tracing, i.e. once per compilation
        return jnp.sum(jnp.where(mask[:, None], x, 0))

    data = np.ones((6000, 4), np.float32)
    sampler = dpjax.PoissonSampler(6000, expected_batch_size=256, seed=0)
    for t in range(100):
        b = sampler.sample(t)
        step(data[b.indices], b.mask)
    assert len(traces) <= 3, traces


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset_size=0, expected_batch_size=1, seed=0), "dataset_size=0"),
        (dict(dataset_size=10, expected_batch_size=0, seed=0), "expected_batch_size=0"),
        (dict(dataset_size=10, expected_batch_size=20, seed=0), "exceeds dataset_size"),
        (dict(dataset_size=10, expected_batch_size=2, seed=-1), "seed=-1"),
        (
            dict(dataset_size=10, expected_batch_size=2, seed=0, microbatch_size=0),
            "microbatch_size=0",
        ),
    ],
)
def test_invalid_arguments_are_refused(kwargs, match):
    n = kwargs.pop("dataset_size")
    with pytest.raises(ValueError, match=match):
        dpjax.PoissonSampler(n, **kwargs)
