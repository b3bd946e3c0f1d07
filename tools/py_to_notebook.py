"""Turn a percent-format Python script into a notebook (an authoring aid).

Cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown; each line
starts with ``# ``). Tags follow as ``# %% tags=["nbval-check-output"]``.

    python tools/py_to_notebook.py draft.py notebooks/NN_name.ipynb
    ruff format notebooks/NN_name.ipynb && python tools/execute_notebooks.py notebooks/NN_name.ipynb
"""

from __future__ import annotations

import json
import re
import sys

import nbformat

HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?:\s+tags=(?P<tags>\[.*\]))?\s*$")


def convert(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "stabletrain",
        "display_name": "Python (stabletrain)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    cells: list[tuple[bool, list[str], list[str]]] = []
    for line in source.splitlines():
        m = HEADER.match(line)
        if m:
            tags = json.loads(m.group("tags")) if m.group("tags") else []
            cells.append((bool(m.group("md")), tags, []))
        elif cells:
            cells[-1][2].append(line)
    for is_md, tags, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if is_md:
            text = "\n".join(re.sub(r"^# ?", "", ln) for ln in lines)
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell("\n".join(lines))
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: py_to_notebook.py SOURCE.py TARGET.ipynb")
    with open(argv[0]) as f:
        nb = convert(f.read())
    nbformat.write(nb, argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
