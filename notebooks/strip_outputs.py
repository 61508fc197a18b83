r"""Clears the outputs of notebooks in place, so the stored copies diff as code.

  python notebooks/strip_outputs.py notebooks/*.ipynb

Removes every code cell's outputs and execution count and the per-cell execution
timestamps a kernel client records; sources, cell ids, tags and notebook metadata stay.
tests/test_notebooks.py fails on a stored notebook that still has outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import nbformat


def strip_outputs(nb: nbformat.NotebookNode) -> bool:
    """Clears `nb` in place; True if anything was removed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs, cell.execution_count, changed = [], None, True
        if "execution" in cell.metadata:  # nbclient's per-cell timing
            del cell.metadata["execution"]
            changed = True
    return changed


def strip_file(path: str) -> bool:
    """Strips the notebook at `path` in place; True if it was rewritten."""
    nb = nbformat.read(path, as_version=4)
    if not strip_outputs(nb):
        return False
    nbformat.write(nb, path)
    return True


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python notebooks/strip_outputs.py NOTEBOOK.ipynb [...]", file=sys.stderr)
        return 2
    for path in argv:
        print(f"{path}: {'stripped' if strip_file(path) else 'already clean'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
