"""Fuzzing the entry points a hostile or careless user reaches: IDX files, the config, the CLI.

Each must answer with a clear ValueError (the CLI: exit status 2 and a message), never another
exception, a hang, or an allocation sized by an unchecked header.
"""

import dataclasses
import gzip
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpjax.data import _datasets
from dpjax.training import TrainConfig, _cli

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------- IDX parser


def _idx(code, shape, body=b""):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body


@FAST
@given(blob=st.binary(max_size=80), gz=st.booleans())
def test_load_idx_answers_any_bytes_with_an_array_or_a_value_error(tmp_path_factory, blob, gz):
    path = tmp_path_factory.mktemp("idx") / "f"
    path.write_bytes(gzip.compress(blob) if gz else blob)
    try:
        array = _datasets.load_idx(path)
    except ValueError:
        return
    assert array.nbytes <= len(blob)


@FAST
@given(
    code=st.sampled_from(sorted(_datasets._IDX_DTYPES)),
    shape=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
    body=st.binary(max_size=64),
    gz=st.booleans(),
)
def test_a_forged_header_never_sizes_an_allocation(tmp_path_factory, code, shape, body, gz):
    path = tmp_path_factory.mktemp("idx") / "f"
    raw = _idx(code, shape, body)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    expected = math.prod(shape) * _datasets._IDX_DTYPES[code].itemsize
    if expected != len(body):
        with pytest.raises(ValueError, match="truncated|trailing|more than dpjax reads"):
            _datasets.load_idx(path)
    else:
        assert _datasets.load_idx(path).shape == tuple(shape)


def test_a_gzip_header_announcing_terabytes_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(_idx(0x08, (2**20, 2**20)) + b"\0" * 10))
    reads = []
    real = _datasets._read_at_most
    monkeypatch.setattr(_datasets, "_read_at_most", lambda s, n: reads.append(n) or real(s, n))
    with pytest.raises(ValueError, match="more than dpjax reads"):
        _datasets.load_idx(path)
    assert reads == []


def test_an_uncompressed_header_larger_than_the_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(_idx(0x0E, (2**31, 2**31)) + b"\0" * 16)
    with pytest.raises(ValueError, match="is truncated"):
        _datasets.load_idx(path)


# ----------------------------------------------------------------------------- TrainConfig

_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.sampled_from(["digits", "mlp", "adam", "pld", "auto", "constant", "linear:0.5", "none"]),
)
_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


@FAST
@given(st.dictionaries(st.sampled_from(_FIELDS), _ODD_VALUES, min_size=1, max_size=3))
def test_train_config_of_any_types_is_built_or_refused_with_a_value_error(kw):
    try:
        config = TrainConfig(**kw)
    except ValueError as err:
        assert str(err)
        return
    assert isinstance(config.not_private, bool)  # never a truthy string turning privacy off


@pytest.mark.parametrize("value", ["false", "no", 0, 1, None, [1]])
def test_not_private_must_be_a_bool_so_a_config_string_cannot_turn_privacy_off(value):
    with pytest.raises(ValueError, match="not_private=.* must be True or False"):
        TrainConfig(not_private=value)


# ------------------------------------------------------------------------------------- CLI

_TOKENS = st.sampled_from(
    ["1", "0", "-1", "0.5", "1e-5", "1e309", "nan", "inf", "-inf", "abc", "", "2e9", "3",
     "256", "digits", "logreg", "rdp", "pld", "--json", "--steps", "--epochs", "--delta",
     "--noise-multiplier", "--sampling-rate", "--dataset-size", "--batch-size",
     "--target-epsilon", "--accountant", "--model", "--dataset", "--lr", "--seed",
     "--clip-norm", "--checkpoint-every", "--noise-schedule", "--augmult", "--ema-decay",
     "--not-private", "--clipping", "linear:0.5", "exponential:-1"]
)  # fmt: skip


class _Trained(Exception):
    """Raised by the stub trainer: the CLI built a valid config and would train."""


@FAST
@given(
    command=st.sampled_from(["epsilon", "calibrate", "train", "nonsense"]),
    rest=st.lists(_TOKENS, max_size=10),
)
def test_the_cli_answers_any_arguments_with_status_0_or_2(command, rest):
    def stub(config, **kwargs):
        assert isinstance(config, TrainConfig)
        raise _Trained

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_cli, "train", stub)
        try:
            code = _cli.main([command, *rest])
        except _Trained:
            return
    assert code in (0, 2)
