"""The README's Python example runs as written."""

import re
from pathlib import Path

import jax

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    with jax.numpy_rank_promotion("allow"):  # user code broadcasts like NumPy
        for code in blocks:
            exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "this run will spend" in out and "spent:" in out
