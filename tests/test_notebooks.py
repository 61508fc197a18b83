"""notebooks/: stored without outputs, and executed end to end at a tiny size.

Each notebook runs in a fresh `python3` (ipykernel) kernel through nbclient, with a cell
injected after its `parameters`-tagged cell (papermill's convention) that points every
path into tmp_path and shrinks the run to seconds; any cell error fails the test. A probe
cell appended to the executed copy prints the notebook's key state as JSON so the test can
check what the cells computed, not only that they ran.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from she_jax.eval import deploy
from she_jax.special_tokens import LABELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
PROBE_MARKER = "NOTEBOOK_PROBE "

# The quickstart's SFT at the size tests/test_sft.py trains: a 2-layer, 64-wide model on a
# small world, one compiled train step, 12 updates.
TINY_QUICKSTART = {
    "TOTAL_STEPS": 12,
    "EVAL_SPLITS": ("test_head", "test_negation"),
    "EVAL_MAX_EXAMPLES": 12,
    "NUM_SHOWN": 2,
    "OVERRIDES": {
        "data.world_overrides": {"sft_size": 320, "rl_size": 64, "dev_size": 32,
                                 "test_size": 24},
        "model.vocab_size": 1024,
        "model.preset": "tiny",
        "model.overrides": {"num_layers": 2, "hidden_size": 64, "mlp_dim": 128},
        "sft.buckets": (160,),
        "batch.batch_size": 8,
        "eval.batch_size": 8,
        "eval.max_new_tokens": 32,
    },
}


def notebook_paths() -> list[str]:
    return sorted(os.path.join(NOTEBOOKS, name) for name in os.listdir(NOTEBOOKS)
                  if name.endswith(".ipynb"))


def parameters_index(nb: nbformat.NotebookNode, path: str) -> int:
    tagged = [i for i, cell in enumerate(nb.cells)
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found "
                         f"{len(tagged)}")
    return tagged[0]


def inject_parameters(nb: nbformat.NotebookNode, path: str, params: dict[str, Any]) -> None:
    """Inserts `NAME = repr(value)` lines right after the parameters cell (in place)."""
    source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(parameters_index(nb, path) + 1, cell)


def _kernel_name() -> str:
    """'python3' when it is installed; else this interpreter's kernel, registered now."""
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(user=True, kernel_name="python3")
    return "python3"


def execute(path: str, params: dict[str, Any], probe: str, cwd: str) -> tuple[
        nbformat.NotebookNode, dict[str, Any], float]:
    """Runs a notebook with injected parameters and a probe cell printing JSON state.

    Returns (the executed notebook, the probe's JSON, seconds). Raises
    nbclient.exceptions.CellExecutionError (with the cell and traceback) on any cell error.
    """
    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, path, params)
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import json as _json\nprint({PROBE_MARKER!r} + _json.dumps({probe}))"))
    client = NotebookClient(nb, kernel_name=_kernel_name(), timeout=600,
                            resources={"metadata": {"path": cwd}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    lines = [line for output in nb.cells[-1].outputs if output.get("name") == "stdout"
             for line in output["text"].splitlines() if line.startswith(PROBE_MARKER)]
    assert len(lines) == 1, nb.cells[-1].outputs
    print(f"{os.path.basename(path)} executed in {seconds:.1f} s", file=sys.stderr)
    return nb, json.loads(lines[0][len(PROBE_MARKER):]), seconds


def outputs_of(nb: nbformat.NotebookNode, needle: str) -> list[dict]:
    """The outputs of the one code cell whose source contains `needle`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(cells) == 1, f"{len(cells)} cells contain {needle!r}"
    return cells[0].outputs


def test_there_are_notebooks():
    names = {os.path.basename(p) for p in notebook_paths()}
    assert {"quickstart.ipynb", "compare_runs.ipynb"} <= names


@pytest.mark.parametrize("path", notebook_paths(), ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    strip = "clear them with `jupyter nbconvert --clear-output --inplace " + path + "`"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path}: cell {index} has outputs; {strip}"
            assert cell.execution_count is None, f"{path}: cell {index} has an execution count"
    # A one-line description on top, and one parameters cell for the injected values.
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    parameters_index(nb, path)
    assert nb.metadata.kernelspec.name == "python3"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart executed once at the tiny size: (executed nb, probe, seconds, workdir)."""
    tmp = tmp_path_factory.mktemp("quickstart")
    workdir = str(tmp / "run_seed0")
    params = dict(TINY_QUICKSTART, WORKDIR=workdir, CACHE_DIR=str(tmp / "cache"))
    probe = ('{"workdir": workdir, "probs": probs.tolist(), "tiers": tiers.tolist(), '
             '"beta": BETA, "steps": curves.index.tolist(), "scored": scored.to_dict("list"), '
             '"splits": sorted(eval_dict["splits"]), "shown": len(decoded["texts"])}')
    nb, state, seconds = execute(os.path.join(NOTEBOOKS, "quickstart.ipynb"), params, probe,
                                 str(tmp))
    return nb, state, seconds, workdir


def test_quickstart_trains_evaluates_scores_and_tiers(quickstart):
    nb, state, seconds, workdir = quickstart
    # The install cell did nothing here: she_jax was importable, nothing was cloned.
    assert outputs_of(nb, "SHE_JAX_REPO =") == []
    assert not os.path.exists(os.path.join(os.path.dirname(workdir), "she_jax"))
    # The run directory of the SFT it trained, at the injected size.
    for name in ("config.json", "metrics.jsonl", "eval.json", "predictions.jsonl", "model",
                 "tokenizer", "plots"):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert config["optimizer"]["total_steps"] == 12
    assert config["model"]["overrides"] == TINY_QUICKSTART["OVERRIDES"]["model.overrides"]
    assert state["workdir"] == workdir
    assert state["steps"] == list(range(1, 13))  # log_every = 1 at 12 updates
    assert state["splits"] == sorted(TINY_QUICKSTART["EVAL_SPLITS"])
    assert state["shown"] == TINY_QUICKSTART["NUM_SHOWN"]
    # Each shown example: its query, and a step-by-step table of gold against model.
    shown = outputs_of(nb, "evaluate.predict_split(")
    tables = [o["data"]["text/html"] for o in shown if "text/html" in o.get("data", {})]
    assert len(tables) == TINY_QUICKSTART["NUM_SHOWN"]
    assert all("category_match" in t and "gold" in t for t in tables)
    # The curves were drawn inline, and the eval table and confusion matrix shown.
    assert any("image/png" in o.get("data", {}) for o in outputs_of(nb, "curves ="))
    eval_outputs = outputs_of(nb, "report.markdown_table(eval_dict)")
    assert any("test_head" in o.get("data", {}).get("text/markdown", "") for o in eval_outputs)
    assert any("image/png" in o.get("data", {}) for o in eval_outputs)
    # Every pair was scored with 4 label probabilities, labelled by their argmax and tiered
    # by CumPT at the notebook's beta.
    probs = np.array(state["probs"])
    assert probs.shape == (len(state["scored"]["query"]), len(LABELS)) and len(probs) >= 2
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(state["tiers"], deploy.cumpt_tiers(probs, state["beta"]))
    assert state["scored"]["label"] == [LABELS[k] for k in probs.argmax(axis=1)]
    assert state["scored"]["tier"] == [deploy.TIERS[t] for t in state["tiers"]]
    print(f"quickstart: {seconds:.1f} s", file=sys.stderr)
