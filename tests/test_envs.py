"""The conda environments of the jobs stay in step with pyproject.toml."""

import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "envs"

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
    requirements = map(Requirement, project()["dependencies"])
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


@pytest.mark.parametrize("env_file", sorted(NEEDED))
def test_pins_satisfy_the_project_dependencies(env_file):
    pinned = pins(env_file)
    specifiers = dependencies()
    for name, conda_name in NEEDED[env_file].items():
        assert conda_name in pinned, f"{env_file} lacks {conda_name} (for {name})"
        version, wanted = pinned[conda_name], specifiers[name]
        assert version in wanted, f"{env_file}: {conda_name}=={version}, not {name}{wanted}"


@pytest.mark.parametrize("env_file", sorted(NEEDED))
def test_python_matches_the_project(env_file):
    assert pins(env_file)["python"] in SpecifierSet(project()["requires-python"])


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
