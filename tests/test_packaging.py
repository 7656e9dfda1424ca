"""The shipped version pins: every dependency pinned once, inside pyproject's ranges, and used."""

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = version
    return pins


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = _pins()
    for text in requirements:
        requirement = Requirement(text)
        key = canonicalize_name(requirement.name)
        assert key in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[key]}, outside pyproject's {text!r}"
        )


def test_readme_commands_and_ci_install_the_pins():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)[:2]
    assert len(commands) == 2
    for command in [*commands, (ROOT / ".ci" / "run").read_text()]:
        assert "pip install -q -c constraints.txt -e" in command, command
