"""Execute notebooks in place, top to bottom, in a fresh kernel, and save them.

    python tools/execute_notebooks.py notebooks/00_quickstart.ipynb [...]

Runs each notebook with its working directory set to ``notebooks/`` (as JupyterLab
and nbval do), the kernel of the current environment, and prints its wall time.
The widgets' state is stored in the notebook (nbclient's ``store_widget_state``), so a
notebook opened before it is run shows its widgets as they were, not their text repr.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient


def execute(path: pathlib.Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,  # a freshly opened notebook shows the widgets, not VBox(...)
    )
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata["kernelspec"] = {
        "name": "stabletrain",
        "display_name": "Python (stabletrain)",
        "language": "python",
    }
    nbformat.write(nb, path)
    return elapsed


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit("usage: execute_notebooks.py NOTEBOOK.ipynb [...]")
    for p in paths:
        elapsed = execute(pathlib.Path(p))
        print(f"{p}: executed in {elapsed:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
