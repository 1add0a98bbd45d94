"""User-level data: a data set split into users (clients), non-IID by label (host side, NumPy)."""

from __future__ import annotations

import dataclasses

import numpy as np

from dpjax import _validation
from dpjax.data import Dataset, Split, load_dataset


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FederatedData:
    """Training examples partitioned into users, and a shared test split.

    Attributes:
      train: all users' examples, concatenated (a :class:`dpjax.data.Split`).
      users: one int64 index array into `train` per user (disjoint, unequal sizes).
      test: held-out examples (not owned by any user), for evaluation.
      num_classes: number of labels.
      synthetic: True for generated data (labelled SYNTHETIC in `source`).
      source: where the data and the split came from.

    Example:
      >>> from dpjax.federated import synthetic_federated_data
      >>> fed = synthetic_federated_data(num_users=5, seed=0)
      >>> fed.num_users, fed.synthetic
      (5, True)
    """

    train: Split
    users: tuple[np.ndarray, ...]
    test: Split
    num_classes: int
    synthetic: bool = False
    source: str = ""

    @property
    def num_users(self) -> int:
        """The population size (the accountant's number of users)."""
        return len(self.users)

    @property
    def user_sizes(self) -> np.ndarray:
        """Examples per user (NOT private: do not release)."""
        return np.array([len(u) for u in self.users], np.int64)

    def __repr__(self) -> str:  # no user sizes: they are not private
        return f"FederatedData({self.num_users} users, {len(self.train)} examples, {self.source})"


def dirichlet_split(
    labels: np.ndarray, num_users: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Splits example indices among users, non-IID by label with a Dirichlet(alpha) prior.

    For each class, its examples are shuffled and divided among the users in
    proportions drawn from Dirichlet(alpha, ..., alpha) (Hsu, Qi, Brown 2019).
    Small alpha gives each user few classes and very unequal sizes; large
    alpha tends to IID. Every user gets at least one example (taken from the
    largest users). Host side; depends only on the labels and `seed`.

    Args:
      labels: `(N,)` integer labels.
      num_users: number of users, 1 <= num_users <= N.
      alpha: the Dirichlet concentration, > 0.
      seed: the split's seed.

    Returns:
      `num_users` sorted int64 index arrays, disjoint, covering `range(N)`.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> import numpy as np
      >>> from dpjax.federated import dirichlet_split
      >>> parts = dirichlet_split(np.arange(100) % 10, num_users=4, alpha=0.5, seed=0)
      >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
      (100, True)

    **Privacy:** the split defines who owns which examples; it is not released.
    The user-level guarantee of a run holds for any split.

    References:
      Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution
      for Federated Visual Classification", 2019, https://arxiv.org/abs/1909.06335.
    """
    labels = np.asarray(labels)
    n = len(labels)
    num_users = _validation.check_positive_int(num_users, "num_users", "100")
    alpha = _validation.check_positive_float(alpha, "alpha", "0.5")
    seed = _validation.check_nonnegative_int(seed, "seed")
    if num_users > n:
        raise ValueError(f"num_users={num_users} exceeds the {n} examples; pass at most {n}.")
    rng = np.random.default_rng([seed, 0xD1])
    owner = np.empty(n, np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(num_users, alpha))
        cuts = np.round(np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
        for user, part in enumerate(np.split(idx, cuts)):
            owner[part] = user
    counts = np.bincount(owner, minlength=num_users)
    for user in np.flatnonzero(counts == 0):  # give empty users one example of the largest
        donor = int(np.argmax(counts))
        moved = np.flatnonzero(owner == donor)[0]
        owner[moved] = user
        counts[donor] -= 1
        counts[user] += 1
    order = np.argsort(owner, kind="stable")
    return [a.astype(np.int64) for a in np.split(order, np.cumsum(counts)[:-1])]


def _flat(split: Split) -> Split:
    return Split(np.asarray(split.x).reshape(len(split), -1), split.y)


def federated_data(
    dataset: str | Dataset,
    *,
    num_users: int,
    alpha: float = 0.5,
    seed: int = 0,
    flatten: bool = True,
) -> FederatedData:
    """A real data set split into `num_users` users, non-IID by label (:func:`dirichlet_split`).

    The users own the data set's train part (its validation part is joined to
    it: federated training holds out nothing from the users); the test part is
    for evaluation.

    Args:
      dataset: a name for :func:`dpjax.data.load_dataset` ("digits",
        "fashion-mnist", "synthetic") or a loaded :class:`dpjax.data.Dataset`.
      num_users: number of users.
      alpha: Dirichlet concentration (smaller is more skewed).
      seed: seed of the data set's split and of the user split.
      flatten: flatten each input to a vector (for linear models and MLPs).

    Returns:
      A :class:`FederatedData`.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> from dpjax.federated import federated_data
      >>> fed = federated_data("digits", num_users=20, alpha=0.5, seed=0)
      >>> fed.num_users, fed.train.x.shape[1]
      (20, 64)
    """
    ds = load_dataset(dataset, seed=seed) if isinstance(dataset, str) else dataset
    x = np.concatenate([np.asarray(ds.train.x), np.asarray(ds.validation.x)])
    y = np.concatenate([np.asarray(ds.train.y), np.asarray(ds.validation.y)])
    train, test = Split(x, y), ds.test
    if flatten:
        train, test = _flat(train), _flat(test)
    users = dirichlet_split(y, num_users, alpha, seed)
    num_classes = int(ds.num_classes) if ds.num_classes else int(y.max()) + 1
    prefix = "SYNTHETIC: " if ds.synthetic else ""
    return FederatedData(
        train=train,
        users=tuple(users),
        test=test,
        num_classes=num_classes,
        synthetic=ds.synthetic,
        source=f"{prefix}{ds.name}, Dirichlet(alpha={alpha}) label split into {num_users} users, "
        f"seed={seed}",
    )


def synthetic_federated_data(
    num_users: int = 20,
    *,
    dim: int = 8,
    num_classes: int = 3,
    mean_examples: int = 10,
    seed: int = 0,
) -> FederatedData:
    """A SYNTHETIC user-level data set for tests: Gaussian classes, users of unequal size.

    User u has `1 + Poisson(mean_examples - 1)` examples, each drawn from one
    of `num_classes` Gaussian clusters in `dim` dimensions; each user has its
    own class preference (non-IID).

    Args:
      num_users: number of users.
      dim: input dimension.
      num_classes: number of labels, >= 2.
      mean_examples: mean examples per user, >= 1.
      seed: the seed.

    Returns:
      A :class:`FederatedData` labelled SYNTHETIC.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> from dpjax.federated import synthetic_federated_data
      >>> fed = synthetic_federated_data(num_users=3, dim=4, seed=1)
      >>> fed.source.startswith("SYNTHETIC"), fed.train.x.shape[1]
      (True, 4)
    """
    num_users = _validation.check_positive_int(num_users, "num_users", "20")
    dim = _validation.check_positive_int(dim, "dim", "8")
    num_classes = _validation.check_positive_int(num_classes, "num_classes", "3")
    mean_examples = _validation.check_positive_int(mean_examples, "mean_examples", "10")
    seed = _validation.check_nonnegative_int(seed, "seed")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2; pass e.g. num_classes=3.")
    rng = np.random.default_rng([seed, 0xFED])
    centers = rng.normal(0.0, 2.0, size=(num_classes, dim))
    sizes = 1 + rng.poisson(mean_examples - 1, size=num_users)
    prefs = rng.dirichlet(np.full(num_classes, 0.5), size=num_users)
    ys = [rng.choice(num_classes, size=s, p=p) for s, p in zip(sizes, prefs, strict=True)]
    y = np.concatenate(ys).astype(np.int32)
    x = (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    users = tuple(np.split(np.arange(len(y), dtype=np.int64), np.cumsum(sizes)[:-1]))
    y_test = rng.integers(0, num_classes, size=200).astype(np.int32)
    x_test = (centers[y_test] + rng.normal(size=(200, dim))).astype(np.float32)
    return FederatedData(
        train=Split(x, y),
        users=users,
        test=Split(x_test, y_test),
        num_classes=num_classes,
        synthetic=True,
        source=f"SYNTHETIC: {num_classes} Gaussian classes in {dim} dimensions, "
        f"{num_users} users, seed={seed}",
    )
