"""environment.yml (conda) and pyproject.toml (pip) must describe the same software."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def parse(requirement: str) -> tuple[str, frozenset[str]]:
    """'Foo_Bar >=1.0, <2' -> ('foo-bar', {'>=1.0', '<2'}): normalized name, specifiers."""
    match = REQUIREMENT.match(requirement)
    assert match, f"cannot read the requirement {requirement!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    specifiers = frozenset(s.replace(" ", "") for s in match.group(3).split(",") if s.strip())
    return name, specifiers


def as_dict(requirements: list[str]) -> dict[str, frozenset[str]]:
    parsed = [parse(r) for r in requirements]
    names = [name for name, _ in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"
    return dict(parsed)


@pytest.fixture(scope="module")
def pyproject() -> dict[str, frozenset[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return as_dict(project["dependencies"] + project["optional-dependencies"]["dev"])


@pytest.fixture(scope="module")
def conda() -> dict:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def pip_section(conda: dict) -> list[str]:
    sections = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def test_conda_packages_are_python_311_and_pip(conda):
    plain = [d for d in conda["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in plain
    assert "pip" in plain


def test_pip_section_matches_pyproject(conda, pyproject):
    env = as_dict(pip_section(conda))
    assert sorted(env) == sorted(pyproject), "the two files name different packages"
    differ = {n: (env[n], pyproject[n]) for n in env if env[n] != pyproject[n]}
    assert not differ, f"specifiers differ (environment.yml, pyproject.toml): {differ}"


@pytest.mark.parametrize("name, pin", [("torch", "==2.14.1"), ("torchvision", "==0.29.1")])
def test_torch_is_pinned(conda, pyproject, name, pin):
    assert pyproject[name] == {pin}
    assert as_dict(pip_section(conda))[name] == {pin}


def test_parse_normalizes_names_and_specifiers():
    assert parse("Foo_Bar >= 1.0, <2") == ("foo-bar", frozenset({">=1.0", "<2"}))
    assert parse("snakemake[reports]>=9.0,<10") == ("snakemake", frozenset({">=9.0", "<10"}))
    assert parse("pip") == ("pip", frozenset())
