"""The report rule's nested `snakemake --report`: the same configuration as the command that runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

from cifar_resnet.errors import StudyError
from cifar_resnet.report import write_report

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# A workflow whose one output, marked for the report, is named by two config values.
TOY = """config.setdefault("name", "default")
config.setdefault("suffix", "txt")


rule all:
    input:
        f"{config['name']}.{config['suffix']}",


rule make:
    output:
        report("{name}.{suffix}", category="Toy"),
    shell:
        "echo {wildcards.name} > {output}"
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "Snakefile").write_text(TOY)
    (tmp_path / "overlay.yaml").write_text("suffix: csv\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> None:
    subprocess.run([str(SNAKEMAKE), "--cores", "1", *args], check=True, capture_output=True)


@pytest.mark.slow  # Snakemake
def test_the_report_sees_the_config_files_and_values_of_the_command(toy):
    run("--configfile", "overlay.yaml", "--config", "name=chosen")

    write_report(
        toy / "report.html", toy / "Snakefile", [toy / "overlay.yaml"], ["name=chosen"], "report.log"
    )

    assert "chosen.csv" in (toy / "report.html").read_text()


@pytest.mark.slow  # Snakemake
def test_a_failed_report_names_its_log_and_leaves_no_file(toy):
    (toy / "Snakefile").write_text("rule all:\n    input: undefined_name\n")

    with pytest.raises(StudyError, match="report.log"):
        write_report(toy / "report.html", toy / "Snakefile", [], [], "report.log")

    assert not list(toy.glob("*.html"))
    assert "undefined_name" in (toy / "report.log").read_text()
