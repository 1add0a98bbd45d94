"""dpjax: differentially private training in JAX. This namespace is the mechanism.

The data flow one way, one module per stage:

    sampling          PoissonSampler, Batch                                   (_sampling, host)
    per-example grads per_example_grads                                       (_per_example)
    clip (+ sum)      clip_per_example, clip_and_sum, clip_weights, ClippedSum, (_clipping)
                      GroupClipNorms (per-layer budgets)
    sparsify          private_topk, topk_support, random_support,             (_sparsity)
                      topk_after_noise
    accumulate        accumulate_clipped_grads, accumulate_microbatches       (_accumulation)
    adaptive clip     adaptive_dp_aggregate (C_t follows a quantile),         (_adaptive)
                      private_group_clip_norms (per-group C_g at a private quantile)
    noise             gaussian_mechanism, add_gaussian_noise                  (_noise)
                      NoiseSchedule, calibrate_noise_schedule,               (_schedules)
                      OnlineNoise, PlateauNoise (sigma_t from released values)
    normalize + step  noisy_mean, scale_by_expected_batch_size, dp_sgd, private_update
                                                                              (_aggregation)
    account           PrivacyTracker, records (PoissonGaussianSteps, ...),    (_tracker, _releases,
                      compute_epsilon, calibrate_noise_multiplier,            _accounting, host)
                      fitting_noise_multiplier

Every clipper returns a :class:`ClippedSum` that carries its L2 sensitivity; the
noise stage reads it from there. Consumers live in subpackages with their own
namespaces: :mod:`dpjax.ghost` (clipping in one backward pass), :mod:`dpjax.data`,
:mod:`dpjax.models`, :mod:`dpjax.training` (trainer, checkpoints, CLI),
:mod:`dpjax.distributed` (devices and hosts), :mod:`dpjax.federated` (user-level
DP-FedAvg), :mod:`dpjax.convex` (output and objective perturbation),
:mod:`dpjax.synthetic` (one release, then free samples), :mod:`dpjax.features`
(ScatterNet, private statistics and tuning) and :mod:`dpjax.audit` (measured
lower bounds). They reuse the stages above and write none of them again.
"""

from dpjax._accounting import calibrate_noise_multiplier as calibrate_noise_multiplier
from dpjax._accounting import compute_epsilon as compute_epsilon
from dpjax._accounting import dp_sgd_event as dp_sgd_event
from dpjax._accounting import max_steps as max_steps
from dpjax._accounting import steps_from_epochs as steps_from_epochs
from dpjax._accumulation import accumulate_clipped_grads as accumulate_clipped_grads
from dpjax._accumulation import accumulate_microbatches as accumulate_microbatches
from dpjax._adaptive import AdaptiveClipState as AdaptiveClipState
from dpjax._adaptive import adaptive_dp_aggregate as adaptive_dp_aggregate
from dpjax._adaptive import effective_noise_multiplier as effective_noise_multiplier
from dpjax._adaptive import private_group_clip_norms as private_group_clip_norms
from dpjax._aggregation import dp_aggregate as dp_aggregate
from dpjax._aggregation import dp_sgd as dp_sgd
from dpjax._aggregation import noisy_mean as noisy_mean
from dpjax._aggregation import non_private_aggregate as non_private_aggregate
from dpjax._aggregation import non_private_mean as non_private_mean
from dpjax._aggregation import private_update as private_update
from dpjax._aggregation import scale_by_expected_batch_size as scale_by_expected_batch_size
from dpjax._clipping import ClippedSum as ClippedSum
from dpjax._clipping import ClipStats as ClipStats
from dpjax._clipping import GroupClipNorms as GroupClipNorms
from dpjax._clipping import NotPrivateWarning as NotPrivateWarning
from dpjax._clipping import ScheduledClipState as ScheduledClipState
from dpjax._clipping import clip_and_sum as clip_and_sum
from dpjax._clipping import clip_per_example as clip_per_example
from dpjax._clipping import clip_weights as clip_weights
from dpjax._clipping import not_private_grads as not_private_grads
from dpjax._clipping import not_private_sum as not_private_sum
from dpjax._clipping import per_example_global_norms as per_example_global_norms
from dpjax._noise import GaussianNoiseState as GaussianNoiseState
from dpjax._noise import add_gaussian_noise as add_gaussian_noise
from dpjax._noise import gaussian_mechanism as gaussian_mechanism
from dpjax._per_example import per_example_grads as per_example_grads
from dpjax._random import derive_seed as derive_seed
from dpjax._random import key_from_seed as key_from_seed
from dpjax._random import secret_key as secret_key
from dpjax._random import secret_seed as secret_seed
from dpjax._releases import EventRelease as EventRelease
from dpjax._releases import GaussianRelease as GaussianRelease
from dpjax._releases import LaplaceRelease as LaplaceRelease
from dpjax._releases import PoissonGaussianSteps as PoissonGaussianSteps
from dpjax._releases import PureEpsilonRelease as PureEpsilonRelease
from dpjax._releases import Release as Release
from dpjax._sampling import Batch as Batch
from dpjax._sampling import PoissonSampler as PoissonSampler
from dpjax._schedules import NoiseSchedule as NoiseSchedule
from dpjax._schedules import OnlineNoise as OnlineNoise
from dpjax._schedules import PlateauNoise as PlateauNoise
from dpjax._schedules import calibrate_noise_schedule as calibrate_noise_schedule
from dpjax._sparsity import PrivateTopKState as PrivateTopKState
from dpjax._sparsity import private_topk as private_topk
from dpjax._sparsity import random_support as random_support
from dpjax._sparsity import topk_after_noise as topk_after_noise
from dpjax._sparsity import topk_support as topk_support
from dpjax._tracker import BudgetExceededError as BudgetExceededError
from dpjax._tracker import PrivacyTracker as PrivacyTracker
from dpjax._tracker import fitting_noise_multiplier as fitting_noise_multiplier

# Entry points kept from the first API (the README's example). Ghost clipping lives in
# `dpjax.ghost`, the data sets in `dpjax.data`, the model zoo in `dpjax.models`.
from dpjax.data import load_dataset as load_dataset  # noqa: E402, I001
from dpjax.ghost import ghost_clipped_grads as ghost_clipped_grads  # noqa: E402
from dpjax.ghost import ghost_conv as ghost_conv  # noqa: E402
from dpjax.ghost import ghost_dense as ghost_dense  # noqa: E402
from dpjax.models import make_model as make_model  # noqa: E402

__version__ = "0.1.0"
