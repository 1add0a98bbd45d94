"""The model zoo: image classifiers built for private training (Flax NNX and linen).

A consumer of the mechanism. Every model maps a batch of inputs to logits, mixes
no examples (BatchNorm is refused by :func:`check_no_batchnorm`), and the
`logreg`, `mlp`, `cnn`, `gn-cnn`, `scatter-cnn` and `linen-mlp` models are built
from ghost layers (:mod:`dpjax.ghost`), so they clip in one backward pass.
"""

from dpjax.models._models import DPCNN as DPCNN
from dpjax.models._models import MLP as MLP
from dpjax.models._models import MODEL_NAMES as MODEL_NAMES
from dpjax.models._models import FunctionalModel as FunctionalModel
from dpjax.models._models import GroupNormCNN as GroupNormCNN
from dpjax.models._models import LinenCNN as LinenCNN
from dpjax.models._models import LinenMLP as LinenMLP
from dpjax.models._models import LogisticRegression as LogisticRegression
from dpjax.models._models import ScatterCNN as ScatterCNN
from dpjax.models._models import check_no_batchnorm as check_no_batchnorm
from dpjax.models._models import functional as functional
from dpjax.models._models import make_model as make_model
