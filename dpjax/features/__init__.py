"""Private features: the scattering transform, private normalization, private tuning.

A consumer of the mechanism. Handcrafted features (:class:`Scattering2D`,
:func:`scatternet_features`) are data-independent: computed once, they cost no
privacy. Their normalization is either per-example (:func:`group_normalize`,
free) or estimated privately (:func:`private_group_statistics`, one Gaussian
release told to the tracker first). :func:`private_tuning` selects
hyperparameters privately (Papernot & Steinke 2022): a random number of runs,
the best one released, its cost one record for the accountant.
"""

from dpjax.features._normalization import GroupStatistics as GroupStatistics
from dpjax.features._normalization import group_normalize as group_normalize
from dpjax.features._normalization import private_group_statistics as private_group_statistics
from dpjax.features._pipeline import scatternet_dataset as scatternet_dataset
from dpjax.features._scattering import Scattering2D as Scattering2D
from dpjax.features._scattering import ScatteringFilters as ScatteringFilters
from dpjax.features._scattering import gabor_2d as gabor_2d
from dpjax.features._scattering import morlet_2d as morlet_2d
from dpjax.features._scattering import morlet_filter_bank as morlet_filter_bank
from dpjax.features._scattering import scattering_channels as scattering_channels
from dpjax.features._scattering import scattering_padded_shape as scattering_padded_shape
from dpjax.features._scattering import scatternet_features as scatternet_features
from dpjax.features._tuning import POISSON as POISSON
from dpjax.features._tuning import TuningResult as TuningResult
from dpjax.features._tuning import private_tuning as private_tuning
from dpjax.features._tuning import sample_number_of_runs as sample_number_of_runs
from dpjax.features._tuning import tuning_epsilon as tuning_epsilon
from dpjax.features._tuning import tuning_release as tuning_release
