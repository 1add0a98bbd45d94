"""Data-parallel DP-SGD on one host: the batch sharded over a `jax.sharding.Mesh`, one noise draw.

Another implementation of the clip stage's placement (ARCHITECTURE.md): each
device clips its own rows, the clipped sums are reduced across devices, and the
noise stage (:func:`dpjax.noisy_mean`) runs once, on the replicated global sum,
with one key. The step is the ordinary `jax.jit(dpjax.private_update(clipper,
tx))`; this namespace only places the data and, where XLA's automatic
partitioning would not keep the per-example work local, wraps the clipper.

* :func:`data_mesh`: a one-axis mesh over the local devices.
* :func:`shard_batch`: the batch and its mask along the leading axis (padded
  with masked rows to a multiple of the device count).
* :func:`replicate`: parameters and optimizer state on every device.
* :func:`data_parallel`: a clipper run per device under `jax.shard_map`
  (`check_vma=False`, see its docstring), its sum and clip counts `psum`-ed:
  needed for :func:`dpjax.accumulate_clipped_grads` with more than one
  microbatch per device (its `lax.scan` would otherwise make XLA all-gather
  the batch), and valid for the vmap and ghost clippers too.

Not done yet: several hosts (`jax.distributed.initialize`), FSDP-sharded
parameters.
"""

from dpjax.distributed._data_parallel import data_mesh as data_mesh
from dpjax.distributed._data_parallel import data_parallel as data_parallel
from dpjax.distributed._data_parallel import replicate as replicate
from dpjax.distributed._data_parallel import shard_batch as shard_batch
