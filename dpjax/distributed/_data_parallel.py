"""Mesh, placement and the shard_map clipper for data-parallel DP-SGD on one host."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import dpjax
from dpjax import _validation

PyTree = Any


def data_mesh(devices: Sequence[Any] | None = None, axis: str = "data") -> Mesh:
    """A one-axis `jax.sharding.Mesh` over `devices`, for sharding batches along `axis`.

    Args:
      devices: the devices, in order; None for all of `jax.devices()` (every
        local device on one host).
      axis: the mesh axis name that :func:`shard_batch` and
        :func:`data_parallel` shard the batch along.

    Returns:
      `Mesh(np.array(devices), (axis,))`.

    Raises:
      ValueError: if `devices` is empty or `axis` is not a non-empty string.

    Example:
      >>> import jax, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> mesh.shape["data"] == len(jax.devices())
      True

    **Privacy:** the mesh only places computation; it changes no value. The
    noise stage that follows a sharded clip adds ONE draw to the global sum.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices=[] is empty; pass None (all devices) or a list of jax devices.")
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"axis={axis!r} must be a non-empty string, e.g. axis='data'.")
    return Mesh(np.array(devices), (axis,))


def _axis_size(mesh: Mesh, axis: str) -> int:
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh={mesh!r} is not a jax.sharding.Mesh; build one with dpjax.distributed.data_mesh()."
        )
    if axis not in mesh.shape:
        raise ValueError(
            f"axis={axis!r} is not an axis of the mesh (axes {tuple(mesh.shape)}); pass one of them "
            f"or build the mesh with dpjax.distributed.data_mesh(axis={axis!r})."
        )
    return int(mesh.shape[axis])


def shard_batch(
    batch: PyTree,
    mask: Any,
    mesh: Mesh,
    *,
    axis: str = "data",
    microbatch_size: int = 1,
) -> tuple[PyTree, jax.Array]:
    """Places a batch and its mask on `mesh`, sharded along the leading axis over `axis`.

    Every leaf of `batch` and the mask are put with `NamedSharding(mesh,
    P(axis))`: device d holds rows `[d * B/D, (d + 1) * B/D)`. If the batch size
    B is not a multiple of `D * microbatch_size` (D devices on `axis`), rows
    are appended first: copies of row 0 with mask False (as
    :class:`dpjax.PoissonSampler` pads), so no real row is dropped or counted
    twice. To avoid the padding, sample with
    `PoissonSampler(..., microbatch_size=D * m)`: its batches are multiples of
    `D * m`, so every device gets a whole number of microbatches of `m` rows.

    Args:
      batch: a pytree of arrays (NumPy or JAX) with a common leading batch axis.
      mask: boolean `(B,)`, True for real rows (a :class:`dpjax.Batch`'s mask).
      mesh: the mesh (:func:`data_mesh`).
      axis: the mesh axis to shard along.
      microbatch_size: the rows each device's clipper takes per microbatch
        (:func:`dpjax.accumulate_clipped_grads` run under
        :func:`data_parallel`); the padded size is a multiple of
        `D * microbatch_size`. 1 when the clipper takes any size.

    Returns:
      `(batch, mask)`: the (padded) batch and boolean mask as sharded
      `jax.Array`s.

    Raises:
      ValueError: if the mesh has no axis `axis`, the batch has no rows or its
        leaves disagree on the batch size, the mask is not `(B,)`, or
        `microbatch_size` is not a positive integer.

    Example:
      >>> import jax.numpy as jnp, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> x, mask = dd.shard_batch(jnp.ones((5, 3)), jnp.ones(5, bool), mesh, microbatch_size=2)
      >>> x.shape[0] % (2 * mesh.shape["data"]), int(mask.sum())
      (0, 5)

    **Privacy:** padded rows have mask False, so every clipper gives them
    weight 0 (:func:`dpjax.clip_weights`): a device whose shard is all padding
    contributes exactly 0 to the global clipped sum. The amount of padding
    depends on the realized batch size, which must not be released; nothing
    here releases it (only the noisy sum leaves the step), though, as on one
    device, the step's duration reflects the number of microbatches.
    """
    d = _axis_size(mesh, axis)
    m = _validation.check_positive_int(microbatch_size, "microbatch_size", "8")
    leaves, treedef = jax.tree.flatten(batch)
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"batch leaves must share one leading batch axis; got shapes "
            f"{jax.tree.map(np.shape, batch)}."
        )
    (size,) = sizes
    b = int(size or 0)
    if b == 0:
        raise ValueError(
            "the batch has no rows; PoissonSampler pads an empty draw to one microbatch."
        )
    if mask is None or np.shape(mask) != (b,):
        raise ValueError(
            f"mask has shape {None if mask is None else np.shape(mask)} but the batch has {b} rows; "
            f"pass a boolean mask of shape ({b},) marking the real rows (mask=batch.mask)."
        )
    multiple = d * m
    pad = -b % multiple
    if pad:
        leaves = [jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) for x in leaves]
        mask = jnp.concatenate([jnp.asarray(mask, bool), jnp.zeros(pad, bool)])
    sharding = NamedSharding(mesh, P(axis))
    placed = [jax.device_put(x, sharding) for x in leaves]
    return jax.tree.unflatten(treedef, placed), jax.device_put(jnp.asarray(mask, bool), sharding)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of `tree` (parameters, optimizer state) whole on every device of `mesh`.

    Args:
      tree: a pytree of arrays; non-array leaves (None, Python scalars) are
        placed as arrays too, so pass array pytrees (e.g. `tx.init(params)`).
      mesh: the mesh (:func:`data_mesh`).

    Returns:
      The tree, every leaf with `NamedSharding(mesh, P())`.

    Raises:
      ValueError: if `mesh` is not a `jax.sharding.Mesh`.

    Example:
      >>> import jax.numpy as jnp, dpjax.distributed as dd
      >>> w = dd.replicate({"w": jnp.zeros(3)}, dd.data_mesh())
      >>> w["w"].sharding.is_fully_replicated
      True

    **Privacy:** placement only. The optimizer state holds the noise key and
    step counter: replicated, every device draws the SAME noise (one global
    draw, computed redundantly), never an independent one.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh={mesh!r} is not a jax.sharding.Mesh; build one with dpjax.distributed.data_mesh()."
        )
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_params(
    tree: PyTree,
    mesh: Mesh,
    *,
    axis: str = "data",
    min_size: int = 2**14,
) -> PyTree:
    """Places parameters (and optimizer state) FSDP-style: each large leaf split over `axis`.

    A floating-point leaf with at least `min_size` elements is split along its
    largest dimension that the device count D divides, with
    `NamedSharding(mesh, P(..., axis, ...))`: each device holds 1/D of it. Every
    other leaf (small ones, integer counters, PRNG keys, leaves no dimension of
    which D divides) is replicated, as :func:`replicate` places it. The step is
    the ordinary `jax.jit(dpjax.private_update(clipper, tx))`: XLA's partitioner
    gathers a weight where a layer needs it whole and keeps the updated
    parameters, the optimizer moments and the noise on them split. With
    `jax_threefry_partitionable` (JAX's default since 0.5), each device then draws
    only its own slice of the ONE global noise draw, the same numbers as an
    unsharded draw with the same key.

    Use it for models whose parameters and optimizer state do not fit on one
    device, with a batch sharded by :func:`shard_batch`. :func:`data_parallel`
    takes replicated parameters (its `shard_map` gathers sharded ones whole on
    every device, which is correct but saves no memory): use plain `jax.jit`
    with the vmap or ghost clippers here.

    Args:
      tree: a pytree of arrays (`params`, or `(params, tx.init(params))`).
      mesh: the mesh (:func:`data_mesh`).
      axis: the mesh axis to split along (the data axis: FSDP shards the
        parameters over the same devices as the batch).
      min_size: the fewest elements a leaf needs to be split; smaller leaves
        are replicated (splitting them costs more communication than memory it
        saves). 0 splits every leaf that can be split.

    Returns:
      The tree, each leaf placed on `mesh`.

    Raises:
      ValueError: if `mesh` has no axis `axis` or `min_size` is negative.

    Example:
      >>> import jax.numpy as jnp, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> w = dd.shard_params({"w": jnp.zeros((8, 3)), "b": jnp.zeros(3)}, mesh, min_size=0)
      >>> w["w"].shape, w["b"].sharding.is_fully_replicated
      ((8, 3), True)

    **Privacy:** placement only; it changes no value. Every per-example
    gradient is still clipped whole (all of its leaves, on every device that
    holds a piece, before the sum), the noise is still one draw with std
    sigma * C on the global sum (drawn piecewise, never once per device), and
    the noise state (key and step counter) is replicated, so every device
    folds in the same step. `tests/distributed/test_data_parallel.py` checks
    that two FSDP steps equal two unsharded ones with the same key, and that no
    device generates the whole draw.
    """
    d = _axis_size(mesh, axis)
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(
            f"min_size={min_size!r} must be an integer >= 0 (elements); pass e.g. 2**14, or 0 to "
            "split every leaf that the device count divides."
        )

    def place(leaf: Any) -> Any:
        x = leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
        split = None
        if jnp.issubdtype(x.dtype, jnp.floating) and x.size >= max(min_size, 1):
            dims = [i for i in range(x.ndim) if x.shape[i] % d == 0 and x.shape[i] >= d]
            if dims:
                split = max(dims, key=lambda i: (x.shape[i], -i))
        spec = P() if split is None else P(*[axis if i == split else None for i in range(x.ndim)])
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(place, tree)


def data_parallel(
    clipper: Callable[[PyTree, PyTree, jax.Array], dpjax.ClippedSum],
    mesh: Mesh,
    *,
    axis: str = "data",
) -> Callable[[PyTree, PyTree, jax.Array], dpjax.ClippedSum]:
    """Runs a clipper on every device's shard under `jax.shard_map` and sums the results.

    Each device calls `clipper(params, local_batch, local_mask)` on its rows
    (params replicated), and the :class:`dpjax.ClippedSum`'s `sum` and `stats`
    are summed over `axis` with `jax.lax.psum`; the sensitivity is the
    clipper's (static). A `support` (top-k) or a `scale` (clip-norm schedule)
    is passed through: both are public values computed from the replicated
    state, so every device holds the same one. The result is replicated: feed it, as
    any clipper's, to `dpjax.private_update(..., optax.chain(dpjax.noisy_mean(
    sigma, n, key), optimizer))`.

    Plain `jax.jit` over a sharded batch already partitions the vmap path
    (:func:`dpjax.clip_per_example`, :func:`dpjax.accumulate_clipped_grads`
    with one microbatch) and :func:`dpjax.ghost.ghost_clipped_grads` (each
    device clips its rows, then an all-reduce). It does not partition
    :func:`dpjax.accumulate_clipped_grads` with several microbatches: its
    `lax.scan` over microbatches makes XLA all-gather the batch, so every
    device does all the work (the result is still correct). Use this wrapper
    then; each device's shard (`B / D` rows) must be a multiple of the
    clipper's `microbatch_size` (:func:`shard_batch` pads to that).

    Args:
      clipper: `(params, batch, mask) -> ClippedSum`, e.g.
        :func:`dpjax.accumulate_clipped_grads` or
        :func:`dpjax.ghost.ghost_clipped_grads`; it sees one device's rows.
      mesh: the mesh (:func:`data_mesh`).
      axis: the mesh axis the batch is sharded along.

    Returns:
      `fn(params, batch, mask) -> ClippedSum`, jittable, with the global
      (summed) clipped sum and clip counts, replicated on every device.

    Raises:
      ValueError: if `clipper` is not callable or the mesh has no axis `axis`;
        at trace time, if the batch size is not a multiple of the device count,
        or the clipper does not return a :class:`dpjax.ClippedSum`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, dpjax, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> grads = dpjax.per_example_grads(lambda w, x: jnp.sum(w * x))
      >>> clipper = dd.data_parallel(
      ...     dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=2), mesh)
      >>> x, mask = dd.shard_batch(jnp.ones((4, 3)), jnp.ones(4, bool), mesh, microbatch_size=2)
      >>> clipped = jax.jit(clipper)(dd.replicate(jnp.zeros(3), mesh), x, mask)
      >>> clipped.sensitivity, int(clipped.stats.num_clipped)
      (1.0, 4)

    **Privacy:** the psum of the devices' clipped sums is the clipped sum of
    the whole batch: each example is on exactly one device and contributes at
    most C there, padded rows (mask False) contribute 0, so the global sum has
    the clipper's sensitivity C. The noise stage runs after this function,
    outside `shard_map`, on the replicated global sum with one key and state:
    noise N(0, (sigma C)^2) is added once (not once per device, which would
    inflate it by sqrt(D); not with per-device keys), and the accountant sees
    one `PoissonGaussianSteps(sigma, q)` step per global step, q being the
    sampler's rate over the whole data set.

    The body runs with `check_vma=False`. With JAX's default (`True`), the
    gradient of a replicated input inside `shard_map` (the parameters, or the
    ghost clipper's output taps) is psum-ed across devices by the transpose,
    so each "per-example" gradient would be the sum of D examples, one per
    device, before clipping: a sensitivity of C would no longer hold per
    example. `tests/distributed/test_data_parallel.py` compares against the
    unsharded clipper and fails if that happens.
    """
    if not callable(clipper):
        raise ValueError(
            f"clipper={clipper!r} is not callable; pass a (params, batch, mask) -> ClippedSum "
            "function, e.g. dpjax.accumulate_clipped_grads(...)."
        )
    d = _axis_size(mesh, axis)

    def local(params: PyTree, batch: PyTree, mask: jax.Array) -> dpjax.ClippedSum:
        clipped = clipper(params, batch, mask)
        if not isinstance(clipped, dpjax.ClippedSum):
            raise ValueError(
                f"the clipper returned {type(clipped).__name__}, not a dpjax.ClippedSum; pass a "
                "clipper such as dpjax.accumulate_clipped_grads or dpjax.ghost.ghost_clipped_grads."
            )
        summed, stats = jax.lax.psum((clipped.sum, clipped.stats), axis)
        # The support and the scale are public and the same on every device (functions of the
        # replicated state); each device's copy is the global one.
        return dpjax.ClippedSum(summed, stats, clipped.sensitivity, clipped.support, clipped.scale)

    def fn(params: PyTree, batch: PyTree, mask: jax.Array) -> dpjax.ClippedSum:
        if mask is None:
            raise ValueError(
                "mask=None: a mask is required so that padded rows never count as examples; pass "
                "the mask dpjax.distributed.shard_batch returns."
            )
        b = int(jnp.shape(mask)[0]) if jnp.ndim(mask) == 1 else -1
        if b < 0 or b % d:
            raise ValueError(
                f"the mask has shape {jnp.shape(mask)}: the batch must have B rows, B a multiple "
                f"of the {d} devices on axis {axis!r}; place it with "
                "dpjax.distributed.shard_batch (which pads with masked rows)."
            )
        # check_vma=False: with it on, the gradient of a replicated input (the parameters, or
        # the ghost clipper's taps) would be psum-ed across devices inside the transpose, so each
        # "per-example" gradient would be a sum of D examples (one per device) before clipping.
        sharded = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P(axis), P(axis)),
            out_specs=P(),
            check_vma=False,
        )
        return sharded(params, batch, mask)

    return fn
