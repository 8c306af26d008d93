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
    },
    "report.yaml": {
        "torch": "pytorch",  # cifar_resnet.files holds the tensor readers too (report jobs never call them)
        "numpy": "numpy",
        "pandas": "pandas",
        "seaborn": "seaborn",
        "matplotlib": "matplotlib-base",  # matplotlib without the GUI toolkits
        "scipy": "scipy",
        "tabulate": "tabulate",
        "pyyaml": "pyyaml",
        "jsonschema": "jsonschema",
    },
}
# Dependencies no job environment needs, and why.
NOT_NEEDED = {
    "snakemake": "runs the workflow; a `script:` job imports it from Snakemake's sys.path",
}
# Metapackages that choose PyTorch's build; they must name the same version as pytorch.
PYTORCH_VARIANT = {"train.yaml": "pytorch-gpu", "report.yaml": "pytorch-cpu"}
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
def test_python_and_pytorch_variant_match(env_file):
    pinned = pins(env_file)
    assert pinned["python"] in SpecifierSet(project()["requires-python"])
    assert pinned[PYTORCH_VARIANT[env_file]] == pinned["pytorch"]


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
