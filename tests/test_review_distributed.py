"""Review of the data-parallel release paths (issue 17, section 5), as an attacker would.

Attacks tried (on this process's devices; the 4-device and two-process checks live in
tests/distributed/): padding rows that copy a hostile row 0 and so might add to the sum; a
global Poisson batch whose padding counts an example twice or drops one; a missing mask; the
launcher's secret seeds reaching a log line through the run record's repr, str or format.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
import dpjax.distributed as dd


def _clipper(l2_norm):
    grads = dpjax.per_example_grads(lambda w, x: jnp.sum(w * x))
    return dpjax.accumulate_clipped_grads(grads, l2_norm=l2_norm, microbatch_size=2)


def test_padding_copies_of_a_hostile_row_contribute_exactly_zero():
    """No finding: rows padded from row 0 (huge) are masked and add 0; NaN row 0 adds 0 too."""
    mesh = dd.data_mesh()
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    x[0] = 1e30  # hostile row 0: its padded copies must not count
    mask = np.ones(5, bool)
    xs, ms = dd.shard_batch(jnp.asarray(x), mask, mesh, microbatch_size=4)
    assert xs.shape[0] == 8 and int(ms.sum()) == 5
    fn = jax.jit(dd.data_parallel(_clipper(1.0), mesh))
    got = fn(dd.replicate(jnp.zeros(3), mesh), xs, ms)
    want = dpjax.clip_and_sum(jnp.asarray(x), 1.0, mask=jnp.ones(5, bool))
    np.testing.assert_allclose(got.sum, want.sum, rtol=1e-5, atol=1e-6)
    assert int(got.stats.num_clipped) == int(want.stats.num_clipped)
    with pytest.raises(ValueError, match="mask"):
        dd.data_parallel(_clipper(1.0), mesh)(jnp.zeros(3), xs, None)


def test_global_batch_counts_every_sampled_example_once():
    """No finding: padded indices are masked; each real index appears once among real rows."""
    mesh = dd.data_mesh()
    sample = dpjax.PoissonSampler(50, expected_batch_size=7, seed=11).sample(3)
    ids = np.arange(50)
    (batch, mask) = dd.shard_global_batch(sample, lambda i: ids[i], mesh, microbatch_size=4)
    real = np.asarray(batch)[np.asarray(mask)]
    assert sorted(real.tolist()) == sorted(np.asarray(sample.indices)[np.asarray(sample.mask)])
    assert np.asarray(mask).shape[0] % 4 == 0


def test_run_environment_never_prints_its_seeds():
    """No finding: repr, str, format and logging of the run record hide both seeds."""
    run = dd.from_environment({"DPJAX_SAMPLER_SEED": "987654321123", "DPJAX_NOISE_SEED": "55555"})
    logged = "run: %s" % (run,)  # noqa: UP031  (what logging's %-formatting does)
    for text in (repr(run), str(run), f"{run}", logged, f"{run!s:>10}"):
        assert "987654321123" not in text and "55555" not in text and "<secret>" in text


def test_run_environment_json_dump_hides_its_seeds():
    # Finding 3 (fixed): a NamedTuple run record was written by json.dumps with both secret
    # seeds; the record is now a dataclass that json refuses, and its repr hides them.
    run = dd.from_environment({"DPJAX_SAMPLER_SEED": "987654321123", "DPJAX_NOISE_SEED": "55555"})
    with pytest.raises(TypeError):
        json.dumps({"run": run})
    for text in (repr(run), str(run), f"{run}"):
        assert "987654321123" not in text and "55555" not in text
