"""environment.yml, requirements/constraints.txt and pyproject.toml must agree."""

import pathlib
import re

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("widgets", "tracking", "course"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def environment_pins() -> dict[str, Version]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for entry in pip:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s]+)", entry)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def test_every_library_and_course_dependency_is_pinned_within_its_range():
    pins = constraints()
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned in constraints"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints pin {req.name}=={pins[name]} outside pyproject's range {req.specifier}"
        )


def test_environment_yml_matches_constraints():
    pins, env = constraints(), environment_pins()
    assert env, "environment.yml has no pinned pip packages"
    for name, version in env.items():
        assert pins.get(name) == version, (
            f"environment.yml pins {name}=={version}, constraints {pins.get(name)}"
        )
    for req in pyproject_requirements():
        assert canonicalize_name(req.name) in env, f"{req.name} missing from environment.yml"


def test_environment_yml_installs_the_repository():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*- -e \.\[course\]\s*$", text, re.M)


def test_constraints_pin_a_cpu_capable_torch_that_the_makefile_reads():
    makefile = (ROOT / "Makefile").read_text()
    assert "sed -n 's/^torch==//p' $(CONSTRAINTS)" in makefile
    assert "torch" in constraints()
