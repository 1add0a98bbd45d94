"""The layout rules of ARCHITECTURE.md, checked on the code itself."""

import ast
import pathlib

import dpjax

ROOT = pathlib.Path(dpjax.__file__).parent
SHARED = {"dpjax._validation"}  # the one shared validator module every layer may use
# Subpackages that are another implementation of a mechanism stage (ARCHITECTURE.md rule 3);
# every other subpackage is a consumer.
STAGE_IMPLEMENTATIONS = {"ghost", "distributed"}


def _dpjax_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("dpjax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpjax"):
            if node.module == "dpjax":
                yield from (f"dpjax.{a.name}" for a in node.names)
            else:
                yield node.module


def _is_private_core(name):
    parts = name.split(".")
    return len(parts) >= 2 and parts[1].startswith("_") and name not in SHARED


def test_consumers_use_only_the_public_mechanism():
    # The trainer's step is built from public pieces: no consumer reaches into a core module.
    offenders = {}
    consumers = [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()]
    consumers = [c for c in consumers if c not in STAGE_IMPLEMENTATIONS]
    assert {"training", "data", "models"} <= set(consumers)
    for package in consumers:
        for path in (ROOT / package).rglob("*.py"):
            bad = [m for m in _dpjax_imports(path) if _is_private_core(m)]
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, offenders


def test_core_modules_import_no_subpackage_and_do_no_file_io():
    for path in ROOT.glob("_*.py"):
        if path.name.startswith("__"):
            continue
        imports = list(_dpjax_imports(path))
        assert not [
            m for m in imports if m.split(".")[1:2] and not m.split(".")[1].startswith("_")
        ], (
            path.name,
            imports,
        )
        text = path.read_text()
        assert "open(" not in text and "Path(" not in text, path.name
