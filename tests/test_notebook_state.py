"""The notebooks' stored state: opened before running, every widget shows as it was left."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_stored_widget_view_has_its_model_stored(path):
    nb = json.loads(path.read_text())
    stored = nb["metadata"].get("widgets", {}).get(STATE, {}).get("state", {})
    views = [
        output["data"][VIEW]["model_id"]
        for cell in nb["cells"]
        for output in cell.get("outputs", [])
        if VIEW in output.get("data", {})
    ]
    missing = [v for v in views if v not in stored]
    assert not missing, f"{path.name}: re-execute with tools/execute_notebooks.py ({missing[:3]})"
