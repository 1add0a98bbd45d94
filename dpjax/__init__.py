"""dpjax: differentially private training in JAX.

The data flows one way: sampling -> per-example gradients -> clip ->
(accumulate) -> noise -> normalize -> optimizer -> accountant.
"""

from dpjax._accounting import BudgetExceededError as BudgetExceededError
from dpjax._accounting import PrivacyTracker as PrivacyTracker
from dpjax._accounting import calibrate_noise_multiplier as calibrate_noise_multiplier
from dpjax._accounting import compute_epsilon as compute_epsilon
from dpjax._accounting import dp_sgd_event as dp_sgd_event
from dpjax._accounting import max_steps as max_steps
from dpjax._accounting import steps_from_epochs as steps_from_epochs
from dpjax._accumulation import accumulate_clipped_grads as accumulate_clipped_grads
from dpjax._aggregation import NotPrivateWarning as NotPrivateWarning
from dpjax._aggregation import dp_aggregate as dp_aggregate
from dpjax._aggregation import dp_sgd as dp_sgd
from dpjax._aggregation import noisy_mean as noisy_mean
from dpjax._aggregation import non_private_aggregate as non_private_aggregate
from dpjax._aggregation import scale_by_expected_batch_size as scale_by_expected_batch_size
from dpjax._clipping import ClipStats as ClipStats
from dpjax._clipping import clip_and_sum as clip_and_sum
from dpjax._clipping import clip_per_example as clip_per_example
from dpjax._clipping import per_example_global_norms as per_example_global_norms
from dpjax._datasets import DATASET_NAMES as DATASET_NAMES
from dpjax._datasets import Dataset as Dataset
from dpjax._datasets import Split as Split
from dpjax._datasets import load_dataset as load_dataset
from dpjax._datasets import load_idx as load_idx
from dpjax._ghost import ghost_clipped_grads as ghost_clipped_grads
from dpjax._ghost import is_ghost_compatible as is_ghost_compatible
from dpjax._ghost_layers import GhostConv as GhostConv
from dpjax._ghost_layers import GhostDense as GhostDense
from dpjax._ghost_layers import GhostEmbed as GhostEmbed
from dpjax._ghost_layers import GhostLayerNorm as GhostLayerNorm
from dpjax._ghost_layers import GhostLinear as GhostLinear
from dpjax._ghost_layers import ghost_conv as ghost_conv
from dpjax._ghost_layers import ghost_dense as ghost_dense
from dpjax._ghost_layers import ghost_embed as ghost_embed
from dpjax._ghost_layers import ghost_scale_shift as ghost_scale_shift
from dpjax._models import DPCNN as DPCNN
from dpjax._models import MLP as MLP
from dpjax._models import MODEL_NAMES as MODEL_NAMES
from dpjax._models import FunctionalModel as FunctionalModel
from dpjax._models import GroupNormCNN as GroupNormCNN
from dpjax._models import LinenCNN as LinenCNN
from dpjax._models import LinenMLP as LinenMLP
from dpjax._models import LogisticRegression as LogisticRegression
from dpjax._models import check_no_batchnorm as check_no_batchnorm
from dpjax._models import functional as functional
from dpjax._models import make_model as make_model
from dpjax._noise import GaussianNoiseState as GaussianNoiseState
from dpjax._noise import add_gaussian_noise as add_gaussian_noise
from dpjax._per_example import per_example_grads as per_example_grads
from dpjax._random import key_from_seed as key_from_seed
from dpjax._random import secret_key as secret_key
from dpjax._random import secret_seed as secret_seed
from dpjax._sampling import Batch as Batch
from dpjax._sampling import PoissonSampler as PoissonSampler
from dpjax._trainer import OPTIMIZERS as OPTIMIZERS
from dpjax._trainer import TrainConfig as TrainConfig
from dpjax._trainer import TrainResult as TrainResult
from dpjax._trainer import plan_run as plan_run
from dpjax._trainer import train as train

__version__ = "0.1.0"
