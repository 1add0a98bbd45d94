"""Every docstring Example in every module runs; every public name is documented."""

import doctest
import importlib
import pkgutil
import warnings

import pytest

import dpjax

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(dpjax.__path__, "dpjax.")
    if not m.name.endswith("__main__")
)
NAMESPACES = ["dpjax"] + [m for m in MODULES if not m.rsplit(".", 1)[-1].startswith("_")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.failed == 0


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_has_a_docstring(namespace):
    module = importlib.import_module(namespace)
    missing = []
    for name in dir(module):
        obj = getattr(module, name)
        if name.startswith("_") or not callable(obj) or isinstance(obj, tuple):
            continue
        if getattr(obj, "__module__", "").startswith("dpjax") is False:
            continue
        if len((obj.__doc__ or "").strip()) < 20:
            missing.append(name)
    assert not missing, missing
