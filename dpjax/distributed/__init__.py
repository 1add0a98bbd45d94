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
* :func:`shard_params`: parameters and optimizer state split FSDP-style over
  the data axis (each large leaf along one dimension); the noise on them is
  then drawn piecewise, each device its slice of the one global draw.
* :func:`data_parallel`: a clipper run per device under `jax.shard_map`
  (`check_vma=False`, see its docstring), its sum and clip counts `psum`-ed:
  needed for :func:`dpjax.accumulate_clipped_grads` with more than one
  microbatch per device (its `lax.scan` would otherwise make XLA all-gather
  the batch), and valid for the vmap and ghost clippers too.

Several hosts (one process each, `jax.distributed.initialize`):

* :func:`initialize`: joins the run (Gloo collectives on CPU).
* :func:`process_rows`: the rows of a global batch this process's devices hold.
* :func:`replicate_across_processes`: parameters and optimizer state (the same
  on every process, noise key included) on every device of every process.
* :func:`shard_global_batch`: one global Poisson batch (the same secret seed on
  every process), each process loading and placing only its rows.
* :func:`save_checkpoint_once` / :func:`restore_checkpoint`: process 0 writes
  the checkpoint (with the accountant's state) once, every process waits for
  it; every process restores the same bytes (checked) and process 0 the account.

Starting the processes:

* :func:`from_environment`: joins the run the ``DPJAX_*`` variables describe
  (or runs alone with fresh secret seeds); returns a :class:`RunEnvironment`.
* :func:`launch_local` (``python -m dpjax.distributed -n N -- COMMAND``): N
  processes of one run on this machine, with one pair of secret seeds.
"""

from dpjax.distributed._data_parallel import data_mesh as data_mesh
from dpjax.distributed._data_parallel import data_parallel as data_parallel
from dpjax.distributed._data_parallel import replicate as replicate
from dpjax.distributed._data_parallel import shard_batch as shard_batch
from dpjax.distributed._data_parallel import shard_params as shard_params
from dpjax.distributed._launch import RunEnvironment as RunEnvironment
from dpjax.distributed._launch import from_environment as from_environment
from dpjax.distributed._launch import launch_local as launch_local
from dpjax.distributed._multihost import initialize as initialize
from dpjax.distributed._multihost import process_rows as process_rows
from dpjax.distributed._multihost import replicate_across_processes as replicate_across_processes
from dpjax.distributed._multihost import restore_checkpoint as restore_checkpoint
from dpjax.distributed._multihost import save_checkpoint_once as save_checkpoint_once
from dpjax.distributed._multihost import shard_global_batch as shard_global_batch
