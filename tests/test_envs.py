"""The versions the project names are the versions its tests run: constraints.txt pins what CI installs,
pyproject.toml's lower bounds and the conda environments of the jobs name the same versions, and this
test suite runs in an environment that has them."""

import ast
import importlib.metadata
import platform
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from test_imports import RULES

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "workflow" / "envs"

# What each environment's jobs import: pyproject name -> conda-forge name.
NEEDED = {
    "train.yaml": {
        "torch": "pytorch",
        "torchvision": "torchvision",
        "numpy": "numpy",
        "pandas": "pandas",
        "pyyaml": "pyyaml",
        "jsonschema": "jsonschema",
        "onnx": "onnx",
        "onnxruntime": "onnxruntime",
        "onnxscript": "onnxscript",
        "tensorboard": "tensorboard",
    },
    "report.yaml": {
        "numpy": "numpy",
        "pandas": "pandas",
        "seaborn": "seaborn",
        "matplotlib": "matplotlib-base",  # matplotlib without the GUI toolkits
        "scipy": "scipy",
        "statsmodels": "statsmodels",
        "tabulate": "tabulate",
        "pyyaml": "pyyaml",
        "jsonschema": "jsonschema",
    },
}
# The optional extras the jobs' environments install all the same: the training's live curves.
JOB_EXTRAS = ("tensorboard",)
# Dependencies no job environment needs, and why.
NOT_NEEDED = {
    "snakemake": "runs the workflow; a `script:` job imports it from Snakemake's sys.path",
}
# The metapackage that chooses PyTorch's build; it must name the same version as pytorch.
PYTORCH_VARIANT = "pytorch-gpu"
PIN = re.compile(r"(?P<name>[a-z0-9_.-]+)==(?P<version>[0-9][0-9a-z.]*)")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dependencies() -> dict[str, SpecifierSet]:
    """The project's dependencies, with those of the extras the jobs' environments install."""
    extras = [entry for extra in JOB_EXTRAS for entry in project()["optional-dependencies"][extra]]
    requirements = map(Requirement, project()["dependencies"] + extras)
    return {canonicalize_name(requirement.name): requirement.specifier for requirement in requirements}


def pins(env_file: str) -> dict[str, str]:
    """The environment's ``name==version`` entries; fails on any other kind of entry."""
    environment = yaml.safe_load((ENVS / env_file).read_text())
    assert environment["channels"] == ["conda-forge", "nodefaults"]
    found = {}
    for entry in environment["dependencies"]:
        match = PIN.fullmatch(entry) if isinstance(entry, str) else None
        assert match, f"{env_file}: {entry!r} is not pinned as name==version"
        found[match["name"]] = match["version"]
    return found


def test_every_dependency_is_either_in_an_environment_or_explained():
    placed = {name for needed in NEEDED.values() for name in needed} | set(NOT_NEEDED)
    assert set(dependencies()) == placed


def pinned_versions() -> dict[str, str]:
    """constraints.txt as {name: version}."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    entries = [PIN.fullmatch(line) for line in lines if line and not line.startswith("#")]
    assert all(entries), "constraints.txt holds only name==version lines and comments"
    return {canonicalize_name(entry["name"]): entry["version"] for entry in entries}


def requirements() -> list[Requirement]:
    extras = project()["optional-dependencies"].values()
    listed = project()["dependencies"] + [entry for extra in extras for entry in extra]
    return [Requirement(entry) for entry in listed]


def test_every_requirement_is_pinned_and_its_lower_bound_is_the_pin():
    pinned = pinned_versions()
    bounds = {canonicalize_name(r.name): str(r.specifier) for r in requirements()}
    assert bounds == {name: f">={version}" for name, version in pinned.items()}


def test_this_suite_runs_the_pinned_versions():
    installed = {name: importlib.metadata.version(name) for name in pinned_versions()}
    assert installed == pinned_versions(), "install with `pip install -e '.[test]' -c constraints.txt`"


@pytest.mark.parametrize("env_file", sorted(NEEDED))
def test_the_environments_pin_the_tested_versions(env_file):
    pinned, versions = pins(env_file), pinned_versions()
    for name, conda_name in NEEDED[env_file].items():
        assert pinned.get(conda_name) == versions[name], f"{env_file}: {conda_name} is not {versions[name]}"


@pytest.mark.parametrize("env_file", sorted(NEEDED))
def test_python_is_the_tested_one(env_file):
    assert pins(env_file)["python"] == platform.python_version()
    assert pins(env_file)["python"] in SpecifierSet(project()["requires-python"])


def test_the_training_environment_pins_the_tested_cuda_build():
    import torch

    assert pins("train.yaml")["cuda-version"] == torch.version.cuda


def test_the_workflow_asks_for_the_tested_snakemake():
    snakefile = (ROOT / "workflow" / "Snakefile").read_text()
    assert f'min_version("{pinned_versions()["snakemake"]}")' in snakefile


def test_the_training_environment_pins_one_pytorch_build():
    pinned = pins("train.yaml")
    assert pinned[PYTORCH_VARIANT] == pinned["pytorch"]


def test_the_report_environment_has_no_pytorch():
    assert not {"pytorch", "pytorch-cpu", PYTORCH_VARIANT} & set(pins("report.yaml"))


def test_both_environments_pin_shared_packages_alike():
    train, report = pins("train.yaml"), pins("report.yaml")
    shared = set(train) & set(report)
    assert {name: train[name] for name in shared} == {name: report[name] for name in shared}


def test_a_plain_install_brings_what_snakemake_report_needs():
    """`pip install -e .` alone must let the README's demo command build its report: Snakemake needs
    pygments for `--report`, and only its `reports` extra brings it (pytest brings it too, which hid
    the gap wherever the test dependencies were installed)."""
    requirement = next(r for r in map(Requirement, project()["dependencies"]) if r.name == "snakemake")
    assert "reports" in requirement.extras


def import_closure(script: Path) -> set[str]:
    """The top-level packages that ``script`` and the modules of this package it reaches import, wherever the
    import statement stands (in a function too): every package its job can import, read from the sources."""
    package_root, found, seen, pending = ROOT / "src", set(), set(), [script]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] != "cifar_resnet":
                    found.add(name.split(".")[0])
                    continue
                module = package_root / Path(*name.split("."))
                pending += [p for p in (module.with_suffix(".py"), module / "__init__.py") if p.is_file()]
    return found - set(sys.stdlib_module_names) - {"cifar_resnet", "__future__"}


# Where a conda-forge package's name differs from the Python distribution's.
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_environment_holds_every_package_its_jobs_import(rule):
    script, environment = RULES[rule]
    providers = importlib.metadata.packages_distributions()
    needed = {
        canonicalize_name(providers[module][0]) if module in providers else module
        for module in import_closure(script)
    } - set(NOT_NEEDED)
    pinned = pins(Path(environment).name)
    missing = sorted(name for name in needed if CONDA_NAMES.get(name, name) not in pinned)
    assert not missing, f"{script.name} can import {', '.join(missing)}, which {environment} lacks"
