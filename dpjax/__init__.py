"""dpjax: differentially private training in JAX.

The data flows one way: sampling -> per-example gradients -> clip ->
(accumulate) -> noise -> normalize -> optimizer -> accountant.
"""

from dpjax._accumulation import accumulate_clipped_grads as accumulate_clipped_grads
from dpjax._aggregation import NotPrivateWarning as NotPrivateWarning
from dpjax._aggregation import dp_aggregate as dp_aggregate
from dpjax._aggregation import dp_sgd as dp_sgd
from dpjax._aggregation import noisy_mean as noisy_mean
from dpjax._aggregation import non_private_aggregate as non_private_aggregate
from dpjax._aggregation import scale_by_expected_batch_size as scale_by_expected_batch_size
from dpjax._clipping import ClipState as ClipState
from dpjax._clipping import ClipStats as ClipStats
from dpjax._clipping import clip_and_sum as clip_and_sum
from dpjax._clipping import clip_per_example as clip_per_example
from dpjax._clipping import per_example_global_norms as per_example_global_norms
from dpjax._noise import GaussianNoiseState as GaussianNoiseState
from dpjax._noise import add_gaussian_noise as add_gaussian_noise
from dpjax._per_example import per_example_grads as per_example_grads
from dpjax._sampling import Batch as Batch
from dpjax._sampling import PoissonSampler as PoissonSampler

__version__ = "0.1.0"
