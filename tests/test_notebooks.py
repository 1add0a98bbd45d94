"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), as a user would run them."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _stream_text(notebook) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def test_every_notebook_carries_small_outputs():
    # Committed outputs are what a reader sees on GitHub: present, and small.
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert "epsilon spent" in _stream_text(notebook), f"{path.name}: no committed output"
        assert path.stat().st_size < 400_000, f"{path.name} is {path.stat().st_size} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_in_a_kernel(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    # One CPU device and JAX's default (NumPy-like) rank promotion, as in a user's kernel; the
    # kernel is this interpreter's (ipykernel in the same environment).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "PYTEST_"))}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=env)  # passed on to the kernel manager's start_kernel
    assert "epsilon spent" in _stream_text(notebook)
