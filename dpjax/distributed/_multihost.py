"""Several hosts: `jax.distributed.initialize`, and each process placing only its rows of one global batch."""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import dpjax
from dpjax import _validation
from dpjax.distributed._data_parallel import _axis_size
from dpjax.training import _checkpoint

PyTree = Any


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    initialization_timeout: int = 300,
) -> None:
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    Call it first, in every process (one per host), before anything touches a
    device. When the CPU backend may be used (`JAX_PLATFORMS` unset or naming
    `cpu`) it selects the Gloo collectives for CPU devices
    (`jax_cpu_collectives_implementation='gloo'`), so that the all-reduce of
    the clipped sums crosses processes; GPU and TPU devices use their own
    collectives (NCCL, ICI/DCN), which this setting does not touch. Afterwards
    `jax.devices()` lists the devices of every process, and
    :func:`dpjax.distributed.data_mesh` builds a mesh over all of them.

    Args:
      coordinator_address: `"host:port"` of process 0, reachable from every
        process (process 0 listens there).
      num_processes: the number of processes (hosts), >= 1.
      process_id: this process's index in `[0, num_processes)`.
      initialization_timeout: seconds to wait for every process to join.

    Raises:
      ValueError: if the address is not `"host:port"` with a port in
        [1, 65535], `num_processes` is not a positive integer, `process_id`
        is not in `[0, num_processes)`, or the timeout is not positive.

    Example:
      >>> import dpjax.distributed as dd
      >>> dd.initialize("localhost", 2, 0)
      Traceback (most recent call last):
      ...
      ValueError: coordinator_address='localhost' must be 'host:port', e.g. '10.0.0.1:1234'.

    **Privacy:** the runtime only connects the processes. What keeps one step
    one release is that every process samples the same batch (the same secret
    sampler seed), holds the same replicated noise key and step counter, and
    the noise is drawn once, on the globally summed clipped gradients.
    """
    host, sep, port = (
        coordinator_address.rpartition(":")
        if isinstance(coordinator_address, str)
        else ("", "", "")
    )
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"coordinator_address={coordinator_address!r} must be 'host:port', e.g. '10.0.0.1:1234'."
        )
    n = _validation.check_positive_int(num_processes, "num_processes", "2")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < n:
        raise ValueError(
            f"process_id={process_id!r} must be an integer in [0, {n}): one distinct index per "
            "process, 0 on the coordinator."
        )
    timeout = _validation.check_positive_int(
        initialization_timeout, "initialization_timeout", "300"
    )
    platforms = [
        p.strip() for p in (getattr(jax.config, "jax_platforms", None) or "cpu").split(",")
    ]
    if "cpu" in platforms:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes=n,
        process_id=process_id,
        initialization_timeout=timeout,
    )


def process_rows(batch_size: int, mesh: Mesh, *, axis: str = "data") -> slice:
    """The rows `[start, stop)` of a global batch that this process's devices hold on `mesh`.

    With `NamedSharding(mesh, P(axis))` device d holds rows `[d * B/D,
    (d + 1) * B/D)`; this process holds the rows of its own devices, which must
    be contiguous (a mesh from :func:`dpjax.distributed.data_mesh` over
    `jax.devices()` orders them by process).

    Args:
      batch_size: B, the global (padded) batch size, a multiple of the D
        devices on `axis`.
      mesh: the mesh over every process's devices.
      axis: the mesh axis the batch is sharded along.

    Returns:
      A `slice` of the global batch; on one process, `slice(0, B)`.

    Raises:
      ValueError: if `mesh` has no axis `axis`, B is not a positive multiple
        of D, or this process's rows are not contiguous.

    Example:
      >>> import dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> rows = dd.process_rows(4 * mesh.shape["data"], mesh)
      >>> (rows.start, rows.stop) == (0, 4 * mesh.shape["data"])
      True
    """
    d = _axis_size(mesh, axis)
    b = _validation.check_positive_int(batch_size, "batch_size", str(d))
    if b % d:
        raise ValueError(
            f"batch_size={b} is not a multiple of the {d} devices on axis {axis!r}; pad it "
            f"(dpjax.distributed.shard_global_batch does) or sample with "
            f"PoissonSampler(..., microbatch_size={d})."
        )
    index_map = NamedSharding(mesh, P(axis)).addressable_devices_indices_map((b,))
    spans = set()
    for index in index_map.values():
        rows = index[0] if isinstance(index, tuple) and index else None
        if isinstance(rows, slice):
            spans.add((rows.start or 0, b if rows.stop is None else rows.stop))
    spans = sorted(spans)
    if not spans:
        raise ValueError(
            "this process has no device on the mesh; build it over every process's devices "
            "with dpjax.distributed.data_mesh()."
        )
    start, stop = spans[0][0], spans[-1][1]
    if sum(hi - lo for lo, hi in spans) != stop - start:
        raise ValueError(
            f"this process's devices hold rows {spans} of the batch, not one contiguous range; "
            "build the mesh with dpjax.distributed.data_mesh() (devices ordered by process)."
        )
    return slice(start, stop)


def shard_global_batch(
    sample: dpjax.Batch,
    load: Callable[[np.ndarray], PyTree],
    mesh: Mesh,
    *,
    axis: str = "data",
    microbatch_size: int = 1,
) -> tuple[PyTree, jax.Array]:
    """Places one global Poisson batch on a mesh over several processes, each loading only its rows.

    Every process calls this with the SAME `sample` (a :class:`dpjax.PoissonSampler`
    with the same secret seed gives the same indices on every process). The
    indices are padded (index 0, mask False) to a multiple of `D *
    microbatch_size`, this process takes its rows (:func:`process_rows`),
    calls `load(indices)` for those rows only, and the global arrays are
    assembled with `jax.make_array_from_process_local_data`: a sharded
    `jax.Array` whose shards live on the processes that loaded them. On one
    process it is :func:`dpjax.distributed.shard_batch` of `load(indices)`.

    Args:
      sample: the global :class:`dpjax.Batch` (indices and mask).
      load: `indices -> pytree` of arrays with leading axis `len(indices)`,
        e.g. `lambda i: (x[i], y[i])` on this host's copy (or part) of the data.
      mesh: the mesh over every process's devices (:func:`dpjax.distributed.data_mesh`).
      axis: the mesh axis to shard along.
      microbatch_size: the rows per microbatch of each device's clipper (see
        :func:`dpjax.distributed.shard_batch`).

    Returns:
      `(batch, mask)`: global sharded `jax.Array`s of the padded batch size.

    Raises:
      ValueError: if `sample` is not a :class:`dpjax.Batch`, `load` is not
        callable or returns arrays of the wrong length, or as :func:`process_rows`.

    Example:
      >>> import numpy as np, dpjax, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> x = np.arange(10.0)[:, None]
      >>> sample = dpjax.PoissonSampler(10, expected_batch_size=5, seed=3).sample(0)
      >>> batch, mask = dd.shard_global_batch(sample, lambda i: x[i], mesh)
      >>> int(mask.sum()) == sample.size
      True

    **Privacy:** as :func:`dpjax.distributed.shard_batch`: padded rows have mask
    False and contribute 0, every sampled example is on exactly one device of
    one process, and the padded size (which reflects the realized batch size)
    is never released.
    """
    if not isinstance(sample, dpjax.Batch):
        raise ValueError(
            f"sample={type(sample).__name__} is not a dpjax.Batch; pass sampler.sample(t)."
        )
    if not callable(load):
        raise ValueError(
            f"load={load!r} is not callable; pass indices -> rows, e.g. lambda i: (x[i], y[i])."
        )
    d = _axis_size(mesh, axis)
    m = _validation.check_positive_int(microbatch_size, "microbatch_size", "8")
    indices, mask = np.asarray(sample.indices), np.asarray(sample.mask, bool)
    pad = -len(indices) % (d * m)
    if pad:
        indices = np.concatenate([indices, np.zeros(pad, indices.dtype)])
        mask = np.concatenate([mask, np.zeros(pad, bool)])
    b = len(indices)
    rows = process_rows(b, mesh, axis=axis)
    local = load(indices[rows])
    n_local = rows.stop - rows.start
    if any(np.shape(x)[:1] != (n_local,) for x in jax.tree.leaves(local)):
        raise ValueError(
            f"load returned shapes {jax.tree.map(np.shape, local)} for {n_local} indices; every "
            f"leaf must have {n_local} rows."
        )
    sharding = NamedSharding(mesh, P(axis))

    def place(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (b, *x.shape[1:]))

    return jax.tree.map(place, local), place(mask[rows])


def replicate_across_processes(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of `tree` whole on every device of `mesh`, across processes.

    :func:`dpjax.distributed.replicate` (`jax.device_put`) can only place on
    this process's devices; on a mesh over several processes every process
    passes the SAME values (the same initial parameters, the same
    `tx.init(params)` with the same noise key) and each leaf is built with
    `jax.make_array_from_process_local_data(NamedSharding(mesh, P()), ...)`.
    Typed PRNG keys go through their key data. On one process it is the same
    placement as `replicate`.

    Args:
      tree: a pytree of arrays, equal on every process.
      mesh: the mesh over every process's devices.

    Returns:
      The tree, every leaf a global array with `NamedSharding(mesh, P())`.

    Raises:
      ValueError: if `mesh` is not a `jax.sharding.Mesh`.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> tree = dd.replicate_across_processes({"w": jnp.zeros(3), "key": jax.random.key(0)}, mesh)
      >>> tree["w"].sharding.is_fully_replicated, tree["key"].sharding.is_fully_replicated
      (True, True)

    **Privacy:** placement only. The noise key and step counter in the
    optimizer state must be the same on every process, so that the noise is
    ONE draw, computed identically everywhere; never pass per-process keys.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh={mesh!r} is not a jax.sharding.Mesh; build one with dpjax.distributed.data_mesh()."
        )
    sharding = NamedSharding(mesh, P())

    def put(x: Any) -> jax.Array:
        if _checkpoint._is_key(x):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(put, tree)


def _local_copy(leaf: Any) -> Any:
    """This process's copy of a replicated leaf (a whole array), or the leaf itself."""
    if not isinstance(leaf, jax.Array):
        return leaf
    if not leaf.sharding.is_fully_replicated:
        raise ValueError(
            f"a leaf of shape {leaf.shape} is sharded ({leaf.sharding}); a multi-host checkpoint "
            "holds replicated parameters and optimizer state only. Place them with "
            "dpjax.distributed.replicate_across_processes."
        )
    return leaf.addressable_data(0)


def _file_digest(path: str | os.PathLike[str]) -> np.ndarray:
    digest = hashlib.sha256(pathlib.Path(path).read_bytes()).digest()
    # 16-bit pieces in int32: exact under JAX's default 32-bit integers (the collective's type).
    return np.frombuffer(digest, np.uint16).astype(np.int32)


def save_checkpoint_once(
    path: str | os.PathLike[str],
    tree: PyTree,
    metadata: dict[str, Any],
    *,
    tracker: dpjax.PrivacyTracker | None = None,
) -> None:
    """Writes a checkpoint of a multi-host run ONCE (process 0), then every process waits for it.

    Every process calls it at the same step with the same replicated `tree`
    (parameters and optimizer state, noise key and step counter included).
    Process 0 writes `path` atomically (the trainer's checkpoint format: a
    temporary file, fsync, rename), with `tracker`'s state (process 0 owns the
    accountant) under ``metadata["tracker"]``; the others write nothing. A
    barrier (`sync_global_devices`) then holds every process until the file is
    complete, so a process that goes on to read it finds it whole.

    Args:
      path: the `.npz` file, on a file system every host can read.
      tree: a pytree of fully replicated arrays (:func:`replicate_across_processes`).
      metadata: JSON-serializable record (e.g. the step).
      tracker: process 0's accountant; None on the other processes.

    Raises:
      ValueError: if a leaf is sharded rather than replicated, or `tracker`
        is not None on a process other than 0 (the accountant runs once), or
        `metadata` already holds "tracker".

    Example:
      >>> import os, tempfile, jax.numpy as jnp, dpjax, dpjax.distributed as dd
      >>> mesh = dd.data_mesh()
      >>> tree = dd.replicate_across_processes({"w": jnp.arange(3.0)}, mesh)
      >>> tracker = dpjax.PrivacyTracker(target_epsilon=3.0, delta=1e-5, sampling_rate=0.01)
      >>> tracker.record_step(1.0)
      >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
      >>> dd.save_checkpoint_once(path, tree, {"step": 1}, tracker=tracker)
      >>> tree, metadata, tracker = dd.restore_checkpoint(path, tree, mesh)
      >>> tree["w"].tolist(), metadata["step"], tracker.steps
      ([0.0, 1.0, 2.0], 1, 1)

    **Privacy:** the checkpoint is SENSITIVE (the unreleased state, the noise
    key): keep it with the data. The accountant's state travels in it, so a
    resumed run continues the account and never resets the budget.
    """
    if tracker is not None and jax.process_index() != 0:
        raise ValueError(
            f"tracker is set on process {jax.process_index()}: the accountant runs once, on "
            "process 0; pass tracker=None on the others."
        )
    if "tracker" in metadata:
        raise ValueError(
            "metadata already holds 'tracker'; pass the accountant as tracker= instead."
        )
    local = jax.tree.map(_local_copy, tree)
    if jax.process_index() == 0:
        record = dict(metadata)
        if tracker is not None:
            record["tracker"] = tracker.state_dict()
        _checkpoint.save_checkpoint(path, local, record)
    multihost_utils.sync_global_devices(f"dpjax checkpoint {os.fspath(path)}")


def restore_checkpoint(
    path: str | os.PathLike[str], like: PyTree, mesh: Mesh
) -> tuple[PyTree, dict[str, Any], dpjax.PrivacyTracker | None]:
    """Restores a :func:`save_checkpoint_once` checkpoint on every process, replicated on `mesh`.

    Every process reads the same file; the processes first check, through the
    runtime, that they all read the same bytes (SHA-256), so no host resumes
    from a stale or different copy. Process 0 rebuilds the accountant from the
    saved state; the others get None.

    Args:
      path: the file :func:`save_checkpoint_once` wrote.
      like: a pytree with the saved structure, shapes and dtypes.
      mesh: the mesh over every process's devices.

    Returns:
      `(tree, metadata, tracker)`: the tree replicated on `mesh`, the metadata
      (without "tracker"), and the resumed tracker on process 0 (None
      elsewhere, or if none was saved).

    Raises:
      ValueError: if the file is corrupt or does not match `like`, or the
        processes read different files.

    **Privacy:** the budget never resets: the tracker resumes with every
    release the run recorded before the checkpoint.
    """
    digest = _file_digest(path)
    try:
        multihost_utils.assert_equal(digest, "checkpoint digest")
    except AssertionError as err:
        raise ValueError(
            f"the processes read different files at {os.fspath(path)!r}; put the checkpoint on a "
            "file system every host shares."
        ) from err
    tree, metadata = _checkpoint.load_checkpoint(path, like)
    state = metadata.pop("tracker", None)
    tracker = None
    if state is not None and jax.process_index() == 0:
        tracker = dpjax.PrivacyTracker.from_state_dict(state)
    return replicate_across_processes(tree, mesh), metadata, tracker
