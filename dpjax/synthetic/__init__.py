"""Private synthetic data: spend the budget ONCE on a release, then generate freely.

A consumer of the mechanism. The only functions that read real data are the
releases, :func:`release_embedding` (DP-MERF: per-class sums of public random
Fourier features) and :func:`release_moments` (per-class first and second
moments in a public DCT basis). Each records one :class:`dpjax.GaussianRelease`
in the tracker BEFORE reading the data, sums clipped per-example rows with
:func:`dpjax.accumulate_clipped_grads` (sensitivity 1, carried in the
:class:`dpjax.ClippedSum`) and noises the sum once with
:func:`dpjax.gaussian_mechanism`. They return typed records
(:class:`ReleasedEmbedding`, :class:`ReleasedMoments`) that only they can make.

Everything after is post-processing and takes a release record, never data:
:func:`train_generator` (DP-MERF's conditional MLP), :func:`fit_class_gaussians`
(one Gaussian per class), :func:`sample`; then :func:`tstr_accuracy` evaluates
with a classifier fixed in advance, and :func:`synthesize` runs the whole path
and writes a privacy statement (``dpjax synthesize``).

A generator trained with DP-SGD instead of fitted to statistics:
:func:`release_decoder` trains a conditional VAE (encoder AND decoder saw the
data, both only through DP-SGD: Poisson batches, per-example clipping, ghost by
default, :func:`dpjax.noisy_mean`), records ONE
:class:`dpjax.PoissonGaussianSteps` of all its steps before reading the data,
and returns a :class:`ReleasedDecoder` holding the decoder's weights alone;
:func:`sample_decoder` takes only that record. :func:`synthesize_vae` runs it
end to end (``dpjax synthesize --method vae``).

Fidelity, offline: :func:`scatternet_fid`, a FID-like Frechet distance between
Gaussian fits of fixed ScatterNet features (:func:`fidelity_features`,
:func:`frechet_distance`); not comparable to Inception FID.
"""

from dpjax.synthetic._evaluate import TSTRConfig as TSTRConfig
from dpjax.synthetic._evaluate import accuracy as accuracy
from dpjax.synthetic._evaluate import fit_classifier as fit_classifier
from dpjax.synthetic._evaluate import tstr_accuracy as tstr_accuracy
from dpjax.synthetic._features import DCTBasis as DCTBasis
from dpjax.synthetic._features import RandomFourierFeatures as RandomFourierFeatures
from dpjax.synthetic._fidelity import fidelity_features as fidelity_features
from dpjax.synthetic._fidelity import frechet_distance as frechet_distance
from dpjax.synthetic._fidelity import scatternet_fid as scatternet_fid
from dpjax.synthetic._generators import ClassGaussians as ClassGaussians
from dpjax.synthetic._generators import Generator as Generator
from dpjax.synthetic._generators import GeneratorConfig as GeneratorConfig
from dpjax.synthetic._generators import fit_class_gaussians as fit_class_gaussians
from dpjax.synthetic._generators import sample as sample
from dpjax.synthetic._generators import train_generator as train_generator
from dpjax.synthetic._release import ReleasedEmbedding as ReleasedEmbedding
from dpjax.synthetic._release import ReleasedMoments as ReleasedMoments
from dpjax.synthetic._release import calibrate_release_noise as calibrate_release_noise
from dpjax.synthetic._release import release_embedding as release_embedding
from dpjax.synthetic._release import release_moments as release_moments
from dpjax.synthetic._synthesize import METHODS as METHODS
from dpjax.synthetic._synthesize import SyntheticData as SyntheticData
from dpjax.synthetic._synthesize import sample_grid_png as sample_grid_png
from dpjax.synthetic._synthesize import synthesize as synthesize
from dpjax.synthetic._vae import CLIPPING as CLIPPING
from dpjax.synthetic._vae import ReleasedDecoder as ReleasedDecoder
from dpjax.synthetic._vae import VAEConfig as VAEConfig
from dpjax.synthetic._vae import calibrate_decoder_noise as calibrate_decoder_noise
from dpjax.synthetic._vae import default_vae_config as default_vae_config
from dpjax.synthetic._vae import release_decoder as release_decoder
from dpjax.synthetic._vae import sample_decoder as sample_decoder
from dpjax.synthetic._vae import synthesize_vae as synthesize_vae
