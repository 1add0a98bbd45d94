"""Every docstring Example in the public modules runs and prints what it shows."""

import doctest
import importlib
import pkgutil
import warnings

import pytest

import dpjax

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(dpjax.__path__, "dpjax.") if m.name != "dpjax.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.failed == 0


def test_every_public_name_has_a_docstring_with_args_or_attributes():
    missing = []
    for name in dir(dpjax):
        obj = getattr(dpjax, name)
        if name.startswith("_") or not callable(obj) or isinstance(obj, tuple):
            continue
        doc = obj.__doc__ or ""
        if len(doc.strip()) < 20:
            missing.append(name)
    assert not missing, missing
