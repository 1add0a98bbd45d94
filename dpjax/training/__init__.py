"""The whole private training job: a trainer for any per-example objective, checkpoints, the CLI.

A consumer of the mechanism: it composes the public pieces of :mod:`dpjax`
(Poisson sampling, a clipper, the Gaussian mechanism, an optax optimizer, the
privacy tracker) and adds host-side bookkeeping: planning, evaluation, logs,
checkpoints that resume the accounting, and the `dpjax` command line. Four
levers keep accuracy under privacy (:class:`TrainConfig`): a noise-multiplier
schedule, per-layer clipping, parameter averaging and augmentation multiplicity.
"""

from dpjax.training._cli import main as main
from dpjax.training._config import CLIPPING_MODES as CLIPPING_MODES
from dpjax.training._config import MAX_STEPS as MAX_STEPS
from dpjax.training._config import OPTIMIZERS as OPTIMIZERS
from dpjax.training._config import RunPlan as RunPlan
from dpjax.training._config import TrainConfig as TrainConfig
from dpjax.training._config import plan_run as plan_run
from dpjax.training._levers import CLIP_GROUPS as CLIP_GROUPS
from dpjax.training._levers import NOISE_SCHEDULES as NOISE_SCHEDULES
from dpjax.training._trainer import SUMMARY_FIELDS as SUMMARY_FIELDS
from dpjax.training._trainer import Loss as Loss
from dpjax.training._trainer import TrainResult as TrainResult
from dpjax.training._trainer import classification_loss as classification_loss
from dpjax.training._trainer import train as train
