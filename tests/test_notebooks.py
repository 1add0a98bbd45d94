"""The notebooks run top to bottom (their code cells, in order, in one namespace)."""

import json
from pathlib import Path

import jax
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, capsys):
    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    with jax.numpy_rank_promotion("allow"):  # user code broadcasts like NumPy
        for cell in (c for c in cells if c["cell_type"] == "code"):
            exec(compile("".join(cell["source"]), str(path), "exec"), namespace)
    assert "epsilon spent" in capsys.readouterr().out
