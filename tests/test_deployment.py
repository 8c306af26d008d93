"""The workflow deployed the Snakemake way, from a working directory that holds only its user's
config/: as a module of the user's own Snakefile (what snakedeploy writes), and with
``snakemake -s <clone>/workflow/Snakefile``. Neither needs this repository's README."""

import shutil
from pathlib import Path

import pytest
import yaml
from test_workflow import job_counts, snakemake

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"

MODULE = """configfile: "config/config.yaml"


module cifar_resnet:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from cifar_resnet
"""


def deployment(folder: Path) -> Path:
    """A working directory as snakedeploy leaves it: the workflow's config/ copied, nothing else."""
    shutil.copytree(ROOT / "config", folder / "config")
    return folder


@pytest.fixture
def module_deployment(tmp_path) -> Path:
    folder = deployment(tmp_path)
    (folder / "workflow").mkdir()
    (folder / "workflow" / "Snakefile").write_text(MODULE.format(snakefile=SNAKEFILE.as_posix()))
    return folder


@pytest.mark.slow  # Snakemake
def test_the_module_plans_the_whole_study_and_runs_a_job_there(module_deployment):
    counts = job_counts(snakemake(module_deployment, "-n").stdout)
    assert counts["train"] == 12 * 5 * 3 + 5 * 3 and counts["deploy"] == 12 * 5 * 3
    assert "readme" not in counts  # the README block belongs to this repository

    snakemake(
        module_deployment, "resources/demo/prepared.pt", "--cores", "1", "--configfile", "config/demo.yaml"
    )
    assert (module_deployment / "resources" / "demo" / "prepared.pt").stat().st_size > 0
    assert sorted(path.name for path in module_deployment.iterdir()) == [
        ".snakemake",
        "config",
        "resources",
        "results",
        "workflow",
    ]


@pytest.mark.slow  # Snakemake
def test_snakefile_from_another_folder_plans_the_study_with_its_config(tmp_path):
    folder = deployment(tmp_path)
    overlay = {"study": {"depths": [20, 56], "seeds": [0]}}
    (folder / "config" / "mine.yaml").write_text(yaml.safe_dump(overlay))

    output = snakemake(folder, "-s", str(SNAKEFILE), "-n", "--configfile", "config/mine.yaml").stdout
    counts = job_counts(output)
    assert counts["train"] == 12 * 2 + 2 and counts["deploy"] == 12 * 2
    assert "readme" not in counts
    assert not (folder / "README.md").exists()


@pytest.mark.slow  # Snakemake
def test_a_deployment_that_asks_for_the_readme_needs_its_markers_before_any_job(tmp_path):
    folder = deployment(tmp_path)
    (folder / "config" / "readme.yaml").write_text(yaml.safe_dump({"report": {"update_readme": True}}))
    (folder / "README.md").write_text("# My study\n")

    result = snakemake(folder, "-s", str(SNAKEFILE), "-n", "--configfile", "config/readme.yaml", check=False)
    assert result.returncode == 1
    assert "README.md lacks the marker '<!-- variants:start -->'" in result.stdout + result.stderr
    assert (folder / "README.md").read_text() == "# My study\n"
