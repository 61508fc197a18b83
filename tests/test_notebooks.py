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
import pathlib
import subprocess
import sys
import time
from typing import Any

import ml_collections
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from experiments import registry
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
    # 'python3': the installed kernel spec of that name, else (jupyter_client's fallback)
    # ipykernel on this very interpreter, so nothing needs registering.
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
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
    strip = f"clear them with `python notebooks/strip_outputs.py {path}`"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path}: cell {index} has outputs; {strip}"
            assert cell.execution_count is None, f"{path}: cell {index} has an execution count"
    # A one-line description on top, and one parameters cell for the injected values.
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    parameters_index(nb, path)
    assert nb.metadata.kernelspec.name == "python3"


def run_quickstart(tmp: pathlib.Path) -> tuple[nbformat.NotebookNode, dict, float, str]:
    """The quickstart executed at the tiny size: (executed nb, probe, seconds, workdir)."""
    workdir = str(tmp / "runs" / "run_seed0")
    params = dict(TINY_QUICKSTART, WORKDIR=workdir, CACHE_DIR=str(tmp / "cache"))
    probe = ('{"workdir": workdir, "probs": probs.tolist(), "tiers": tiers.tolist(), '
             '"beta": BETA, "steps": curves.index.tolist(), "scored": scored.to_dict("list"), '
             '"splits": sorted(eval_dict["splits"]), "shown": len(decoded["texts"])}')
    nb, state, seconds = execute(os.path.join(NOTEBOOKS, "quickstart.ipynb"), params, probe,
                                 str(tmp))
    return nb, state, seconds, workdir


def check_quickstart(nb: nbformat.NotebookNode, state: dict, workdir: str) -> None:
    """It trained, plotted, evaluated, decoded, scored and tiered what its cells say."""
    # The install cell did nothing here: she_jax was importable, nothing was cloned.
    assert outputs_of(nb, "SHE_JAX_REPO =") == []
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(workdir)),
                                           "she_jax"))
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


def _rerun(workdir: str, out_dir: str, cache: str, **changes: Any) -> str:
    """Trains the config of a finished run again with `changes` (dotted keys) into out_dir."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.update_from_flattened_dict(changes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHE_JAX_CACHE", cache)
        registry.run_config(config, out_dir)
    return out_dir


def check_compare_runs(tmp: str, workdir: str) -> float:
    """Three runs: the quickstart's (seed 0), seed 1 of the same config, and 6 updates
    instead of 12 (seed 0): two settings, one with 2 seeds, and their paired difference.
    Returns the notebook's seconds."""
    runs = os.path.dirname(workdir)
    cache = os.path.join(tmp, "cache")
    _rerun(workdir, os.path.join(runs, "run_seed1"), cache, seed=1)
    _rerun(workdir, os.path.join(runs, "run_6_steps"), cache, **{"optimizer.total_steps": 6})
    out_dir = os.path.join(tmp, "report")
    params = {"RUN_DIRS": [runs], "OUT_DIR": out_dir, "N_RESAMPLES": 200}
    probe = ('{"report": report, "numbers": numbers.to_dict("records"), '
             '"files": sorted(os.listdir(OUT_DIR))}')
    nb, state, seconds = execute(os.path.join(NOTEBOOKS, "compare_runs.ipynb"), params,
                                 probe, tmp)
    report = state["report"]
    # What the notebook showed is what it wrote.
    assert {"report.json", "report.md", "report.html", "plots"} <= set(state["files"])
    with open(os.path.join(out_dir, "report.json")) as f:
        assert json.load(f) == report
    runs_of = {s["name"]: sorted(os.path.basename(r["workdir"]) for r in s["runs"])
               for s in report["settings"]}
    assert sorted(runs_of.values()) == [["run_6_steps"], ["run_seed0", "run_seed1"]]
    assert any("< 3" in w for w in report["warnings"])
    assert set(report["splits"]) == set(TINY_QUICKSTART["EVAL_SPLITS"])
    # The rendered blocks: the warning, a table per split, the paired differences, plots.
    shown = outputs_of(nb, "compare.report_blocks(report)")
    markdown = "\n".join(o["data"].get("text/markdown", "") for o in shown if "data" in o)
    assert "Warnings" in markdown and "Paired differences" in markdown
    for split in TINY_QUICKSTART["EVAL_SPLITS"]:
        assert f"Split {split}" in markdown
    images = [o for o in shown if "image/png" in o.get("data", {})]
    assert len(images) == 1 + len(report["plots"]["curves"]) >= 2
    # The long table holds report.json's numbers.
    for row in state["numbers"]:
        cell = report["splits"][row["split"]][row["setting"]]["metrics"][row["metric"]]
        if cell["mean"] is not None:
            assert row["mean"] == pytest.approx(cell["mean"])
    return seconds


def check_strip_outputs(executed_nb: nbformat.NotebookNode, tmp: pathlib.Path) -> None:
    """notebooks/strip_outputs.py clears an executed notebook and keeps everything else."""
    executed = tmp / "executed.ipynb"
    nbformat.write(executed_nb, str(executed))
    script = os.path.join(NOTEBOOKS, "strip_outputs.py")
    result = subprocess.run([sys.executable, script, str(executed)], capture_output=True,
                            text=True, check=True)
    assert "stripped" in result.stdout
    nb = nbformat.read(str(executed), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert not any("execution" in c.metadata for c in code)
    # Sources, ids and tags are what was executed.
    assert [c.source for c in nb.cells] == [c.source for c in executed_nb.cells]
    assert [c.get("id") for c in nb.cells] == [c.get("id") for c in executed_nb.cells]
    parameters_index(nb, str(executed))
    # A clean notebook is left alone.
    again = subprocess.run([sys.executable, script, str(executed)], capture_output=True,
                           text=True, check=True)
    assert "already clean" in again.stdout


def test_notebooks_execute_end_to_end(tmp_path):
    """One test, so that pytest-xdist never trains the quickstart twice: the quickstart
    (seed 0), then compare_runs over it and two more tiny runs, then strip_outputs."""
    start = time.perf_counter()
    nb, state, quickstart_seconds, workdir = run_quickstart(tmp_path)
    check_quickstart(nb, state, workdir)
    compare_seconds = check_compare_runs(str(tmp_path), workdir)
    check_strip_outputs(nb, tmp_path)
    print(f"notebooks: quickstart {quickstart_seconds:.1f} s, compare_runs "
          f"{compare_seconds:.1f} s, whole test {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
