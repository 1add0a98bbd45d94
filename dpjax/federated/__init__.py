"""Federated learning with user-level differential privacy (a consumer of the mechanism).

Clients (users) are Poisson-sampled with :class:`dpjax.PoissonSampler`; each
runs local SGD (:class:`LocalSGD`, vmapped over clients padded to a few
shapes); the client update is ONE row for dpjax's clipper, so a user's whole
influence is clipped to C; noise is added once per round on the sum
(:class:`CentralDP`, built on :func:`dpjax.dp_aggregate` or
:func:`dpjax.adaptive_dp_aggregate`) or on every client (:class:`LocalDP`);
the server steps any optax optimizer. The user-level account is a
:class:`dpjax.PrivacyTracker` with one :func:`round_release` per round.

* data: :func:`federated_data` (Dirichlet non-IID label split of a real data
  set), :func:`synthetic_federated_data` (SYNTHETIC), :func:`dirichlet_split`
* client: :class:`LocalSGD`, :class:`ClientBatch`, :func:`client_batch`
* privacy: :class:`CentralDP`, :class:`LocalDP`, :class:`NotPrivateFedAvg`,
  :func:`round_release`, :func:`local_dp_epsilon`, :func:`calibrate_local_noise`
* simulation: :class:`FederatedSimulation`, :func:`make_round`, :class:`RoundResult`
* a small model: :func:`mlp_classifier`
* Flower: :mod:`dpjax.federated.flower` (extra ``[federated]``)
"""

from dpjax.federated._client import ClientBatch as ClientBatch
from dpjax.federated._client import LocalSGD as LocalSGD
from dpjax.federated._client import client_batch as client_batch
from dpjax.federated._data import FederatedData as FederatedData
from dpjax.federated._data import dirichlet_split as dirichlet_split
from dpjax.federated._data import federated_data as federated_data
from dpjax.federated._data import synthetic_federated_data as synthetic_federated_data
from dpjax.federated._model import mlp_classifier as mlp_classifier
from dpjax.federated._privacy import CentralDP as CentralDP
from dpjax.federated._privacy import LocalDP as LocalDP
from dpjax.federated._privacy import NotPrivateFedAvg as NotPrivateFedAvg
from dpjax.federated._privacy import calibrate_local_noise as calibrate_local_noise
from dpjax.federated._privacy import local_dp_epsilon as local_dp_epsilon
from dpjax.federated._privacy import round_release as round_release
from dpjax.federated._simulation import FederatedSimulation as FederatedSimulation
from dpjax.federated._simulation import RoundResult as RoundResult
from dpjax.federated._simulation import make_round as make_round
