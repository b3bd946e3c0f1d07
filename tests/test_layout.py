"""The architecture the library promises, checked: a short loop that probes nothing,
and a declared torch floor that matches the newest torch API the library calls."""

import ast
import re
from pathlib import Path

import tomllib
import torch

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "stabletrain"


def _function(path: Path, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_fit_is_a_short_loop_that_probes_no_collaborator():
    fit = _function(LIB / "loop.py", "fit")
    body = fit.body[1:]  # after the docstring
    assert body[-1].end_lineno - body[0].lineno + 1 <= 90
    calls = {
        n.func.id for n in ast.walk(fit) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not calls & {"getattr", "hasattr"}, calls


def _floor() -> tuple[int, ...]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(d for d in project["dependencies"] if re.match(r"torch\b", d))
    return tuple(int(p) for p in re.search(r">=\s*([\d.]+)", spec).group(1).split(".")[:2])


def test_the_declared_torch_floor_covers_the_apis_the_library_calls():
    # get_total_norm and clip_grads_with_norm_ arrived in torch 2.6
    sources = "\n".join(p.read_text() for p in LIB.rglob("*.py"))
    if "get_total_norm" in sources or "clip_grads_with_norm_" in sources:
        assert _floor() >= (2, 6)
    installed = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    assert installed >= _floor()


def test_the_core_does_not_grow_past_its_line_count():
    # everything under lib/stabletrain outside course/, docstrings and blank lines included;
    # issue 14 asked for 6,500, which cannot hold with every feature of issues 15-17 kept
    core = [p for p in LIB.rglob("*.py") if "course" not in p.relative_to(LIB).parts]
    lines = sum(len(p.read_text().splitlines()) for p in core)
    assert lines <= 8100, f"the core is {lines} lines; it was 8,074 when this budget was set"
