"""Every notebook in colab/ runs top to bottom on the CPU, with its parameters cell overridden to the
embedded default model (SmolLM2-135M-Instruct, GGUF), and is committed with its outputs stripped."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = Path(__file__).parent.parent / "colab"
NOTEBOOKS = sorted(p.stem for p in COLAB.glob("*.ipynb"))

# Per notebook: what replaces the Colab-sized parameters on a 2-core CPU.
OVERRIDES = {
    "quickstart": 'DTYPE = "float32"\nMAX_NEW_TOKENS = 12',
    "sharded_8b_tpu": 'DTYPE = "float32"\nQUANTIZE = "int8"\nBATCH = 3\nMAX_NEW_TOKENS = 8',
    "research_api": 'DTYPE = "float32"\nMESH = "auto"',  # its functions run sharded too
}
# SmolLM2-135M has 9 query and 3 kv heads: 3 devices make a real tensor-parallel mesh for it.
DEVICES = {"sharded_8b_tpu": 3, "research_api": 3}


def test_there_are_three_notebooks():
    assert NOTEBOOKS == ["quickstart", "research_api", "sharded_8b_tpu"]
    assert sorted(OVERRIDES) == NOTEBOOKS


def test_notebooks_are_what_build_py_writes(tmp_path):
    """The committed notebooks are colab/build.py's output: edit the cells there, then rebuild."""
    subprocess.run([sys.executable, str(COLAB / "build.py"), str(tmp_path)], check=True)
    for name in NOTEBOOKS:
        assert (tmp_path / f"{name}.ipynb").read_text() == (COLAB / f"{name}.ipynb").read_text(), (
            f"colab/{name}.ipynb differs from colab/build.py: run python colab/build.py")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "colab-badge.svg" in first.source and f"colab/{name}.ipynb" in first.source
    assert "pip" in nb.cells[1].source and "jax[tpu]" in nb.cells[1].source
    # The install cell runs on Colab alone: what it asks pip for must exist (an extra pip does not know is only a warning).
    extras = re.search(r"jaxllm\[([\w,]+)\] @ git\+https://github.com/", nb.cells[1].source).group(1).split(",")
    known = tomllib.loads((COLAB.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(known), extras
    assert "parameters" in nb.cells[2].metadata.get("tags", [])
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"


def _execute(name, override, tmp_path, monkeypatch, upto=None):
    """The notebook with `override` injected after its parameters cell, run on the CPU's simulated devices up to the
    first cell holding `upto` (all of it when None); the notebook and its outputs' text."""
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(f"# Parameters injected by tests/test_notebooks.py\n{override}"))
    if upto is not None:
        nb.cells = nb.cells[: next(i for i, c in enumerate(nb.cells) if upto in c.source) + 1]
    # The kernel imports this checkout's jaxllm (it runs in tmp_path, where a checkout not installed
    # with pip was not found: the notebook failed at `import jaxllm`, or ran an installed copy).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(COLAB.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: plots become PNG outputs
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={DEVICES.get(name, 1)}")
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Traceback" not in text
    return nb, text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_cpu(name, gguf_path, tmp_path, monkeypatch):
    nb, text = _execute(name, f"MODEL = {str(gguf_path)!r}\n{OVERRIDES[name]}", tmp_path, monkeypatch)
    expect = {"quickstart": "Paris", "sharded_8b_tpu": "tp=3", "research_api": "the model prefers ' Paris.'"}[name]
    assert expect in text, text[-2000:]
    plots = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(plots) >= {"quickstart": 1, "sharded_8b_tpu": 1, "research_api": 4}[name]


@pytest.mark.parametrize("limit, chosen", [(1e12, "float32"), (200e6, "int8"), (128e6, "int4"), (100e6, None)])
def test_tpu_notebook_quantizes_what_does_not_fit(limit, chosen, gguf_path, tmp_path, monkeypatch):
    """QUANTIZE = None: the fit check takes the first of the float dtype, int8 and int4 whose weights and KV cache fit
    the devices' memory (here each device made to report `limit` bytes, as TPUs do), and stops the notebook in one
    line where none does. SmolLM2 over tp=3, batch 3, needs 227 MB a device in float32, 122 in int8, 109 in int4 (0.9 of a
    device's memory may be taken)."""
    fake = "import jax\ntype(jax.devices()[0]).memory_stats = lambda self: {'bytes_limit': %d}" % limit
    override = f'MODEL = {str(gguf_path)!r}\nDTYPE = "float32"\nQUANTIZE = None\nBATCH = 3\n{fake}'
    if chosen is None:
        with pytest.raises(Exception, match="needs .* GB per device but a device has .* GB: choose a smaller MODEL"):
            _execute("sharded_8b_tpu", override, tmp_path, monkeypatch, upto="for QUANTIZE in")
        return
    nb, _ = _execute("sharded_8b_tpu", override, tmp_path, monkeypatch, upto="for QUANTIZE in")
    lines = "".join(o.get("text", "") for o in nb.cells[-1].outputs).splitlines()
    tried = ["float32", "int8", "int4"][: ["float32", "int8", "int4"].index(chosen) + 1]
    assert [line.split()[0] for line in lines] == tried, lines
    assert all(line.endswith("does not fit") for line in lines[:-1]) and not lines[-1].endswith("does not fit"), lines
