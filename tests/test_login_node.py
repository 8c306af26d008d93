"""Where researchers start the workflow: a login node or laptop whose environment holds Snakemake (and the
SLURM executor plugin) and nothing else; a Python that has the jobs' dependencies but not this package;
a deployment folder that uses the workflow as a module; a submitting host with many cores. Each runs on a
copy of this checkout, as a fresh clone would be."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from test_envs import pinned_versions

ROOT = Path(__file__).resolve().parents[1]
CLONE_FILES = ("workflow", "src", "config", "profiles", ".test", "README.md")
# The catalog's convention: the test case's config in .test/config/, run with --directory .test.
TEST_CASE = ".test"


def clone(destination: Path) -> Path:
    """This checkout's workflow, package and configuration, without its environment or results."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake", "results", "resources")
    for name in CLONE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the test venv on PATH or anything on PYTHONPATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return environment | {"PATH": path} | extra


def run(command: list[str], cwd: Path, environment: dict[str, str], timeout: int = 900):
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode:
        pytest.fail(f"{' '.join(command)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def python_can_import(python: Path, module: str) -> bool:
    """Whether ``python`` imports ``module`` in the clean environment its commands run in."""
    command = [str(python), "-c", f"import {module}"]
    return subprocess.run(command, env=clean_environment(), capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_login_node_with_only_snakemake_lints_plans_and_draws_the_workflow(tmp_path):
    """The pinned Snakemake alone reads the workflow, checks the configuration and plans every job of the
    default study, the demo and the test case; with the SLURM plugin added, the profile's plan too."""
    venv = tmp_path / "snakemake-only"
    # Without pip of its own: this environment's pip installs into it (--python), which spares the venv's
    # ensurepip and an older pip's slower install.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python, pins = venv / "bin" / "python", pinned_versions()
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    run([*pip, f"snakemake=={pins['snakemake']}"], tmp_path, clean_environment())
    for module in ("cifar_resnet", "torch", "numpy", "pandas", "matplotlib"):
        assert not python_can_import(python, module), f"the Snakemake-only venv has {module}"
    workdir, environment = clone(tmp_path / "clone"), clean_environment()
    snakemake = [str(venv / "bin" / "snakemake")]
    for args in (
        ["--lint"],
        ["-n"],
        ["-n", "--configfile", "config/demo.yaml"],
        ["--directory", TEST_CASE, "--lint"],
        ["--directory", TEST_CASE, "-n"],
    ):
        result = run([*snakemake, *args], workdir, environment)
        output = result.stdout + result.stderr
        if "--lint" in args:
            assert "Congratulations, your workflow is in a good condition!" in output
        else:
            assert "This was a dry-run" in output and re.search(r"^train\s+\d+$", output, re.M)
    graph = run([*snakemake, "--rulegraph"], workdir, environment).stdout
    assert graph.startswith("digraph") and '"train"' in graph.replace("label = ", "")
    plugin = "snakemake-executor-plugin-slurm"
    run([*pip, f"{plugin}=={pins[plugin]}"], tmp_path, environment)
    result = run([*snakemake, "-n", "--profile", "profiles/slurm"], workdir, environment)
    assert "This was a dry-run" in result.stdout + result.stderr


def deps_only_python(folder: Path) -> Path:
    """A Python that imports every package this test environment has, but not this project's package:
    a venv whose one .pth line adds the test environment's site-packages as a plain folder, where the
    editable install's own .pth (the hook that finds the package) is not run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site_packages = subprocess.run(
        [str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python"


MODULE_SNAKEFILE = """configfile: "config/config.yaml"


module cifar_resnet:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from cifar_resnet
"""


@pytest.mark.slow
def test_a_module_deployment_runs_with_a_python_that_lacks_the_package_and_status_reads_it(tmp_path):
    """The jobs find the package in the workflow's own src/ with nothing installed or set; `status` and
    `release` then work from the deployment's folder."""
    python = deps_only_python(tmp_path / "deps-only")
    assert python_can_import(python, "torch") and python_can_import(python, "snakemake")
    assert not python_can_import(python, "cifar_resnet")
    workflow = clone(tmp_path / "clone")
    deployment = tmp_path / "my study"
    (deployment / "workflow").mkdir(parents=True)
    (deployment / "workflow" / "Snakefile").write_text(
        MODULE_SNAKEFILE.format(snakefile=workflow / "workflow" / "Snakefile")
    )
    shutil.copytree(workflow / TEST_CASE / "config", deployment / "config")
    # The test case's study with one seed: its two variants run every kind of job, in half the jobs.
    config = deployment / "config" / "config.yaml"
    test_case = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**test_case, "study": {**test_case["study"], "seeds": [0]}}))
    home = tmp_path / "home"  # what the jobs write outside the working folder lands here
    home.mkdir()
    environment = {k: v for k, v in clean_environment(HOME=str(home)).items() if not k.startswith("XDG_")}
    run([str(python), "-m", "snakemake", "--cores", "2"], deployment, environment)
    runs = sorted((deployment / "results" / "demo" / "runs").glob("*/resnet8/seed*"))
    assert len(runs) == 2 and all((run / "deploy.json").is_file() for run in runs)
    assert (deployment / "results" / "demo" / "tables" / "accuracy.md").is_file()

    # Snakemake's own process makes the empty folders of its source cache under ~/.cache; nothing else
    written = [path.relative_to(home) for path in home.rglob("*") if not path.is_dir()]
    assert written == [], f"the run wrote outside its folder: {written}"

    cli = [sys.executable, "-m", "cifar_resnet.cli"]  # the clone's package, as the jobs had it
    environment["PYTHONPATH"] = str(workflow / "src")
    status = run([*cli, "status"], deployment, environment).stdout
    assert (
        status.splitlines()[-1] == "2 done, 0 trained, 0 training, 0 stopped, 0 failed, 0 waiting of 2 runs"
    )
    released = [*cli, "release", "release", str(runs[0].relative_to(deployment))]
    run([*released, "--repository", "someone/cifar-resnet"], deployment, environment)
    assert (deployment / "release" / "manifest.json").is_file()


# A submitting host that reports CORES cores to Python and to Snakemake (which counts them itself).
HOST_CORES = """
import multiprocessing, os
import snakemake.utils
os.cpu_count = multiprocessing.cpu_count = snakemake.utils.available_cpu_count = lambda: {cores}
os.sched_getaffinity = lambda pid: set(range({cores}))
"""


def cluster_requests(dry_run: str, resource: str) -> dict[str, set[int]]:
    """{rule: the values of ``resource`` its jobs ask for} from a dry run's job listing."""
    requests = {}
    for rule, details in re.findall(r"^ *rule (\w+):\n(.*?)(?=^\S|^ *rule |\Z)", dry_run, re.M | re.S):
        value = re.search(rf"\b{resource}[:=] ?(\d+)", details)
        if value:
            requests.setdefault(rule, set()).add(int(value[1]))
    return requests


@pytest.mark.parametrize("cores", [64, 1])
def test_no_cluster_request_derives_from_the_submitting_hosts_cores(tmp_path, cores):
    """On a 64-core login node and on a 1-core one alike, every run's SLURM job asks for the CPUs the
    configuration names: the training's one thread and the deployment's latency batch threads."""
    (tmp_path / "sitecustomize.py").write_text(HOST_CORES.format(cores=cores))
    environment = clean_environment(PYTHONPATH=str(tmp_path))
    probe = "import os, snakemake.utils; print(os.cpu_count(), snakemake.utils.available_cpu_count())"
    assert run([sys.executable, "-c", probe], tmp_path, environment).stdout.split() == [str(cores)] * 2
    snakemake = [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm"]
    dry_run = run(snakemake, ROOT, environment).stdout
    cpus = cluster_requests(dry_run, "cpus_per_task")
    assert cpus["deploy"] == {4}  # config/config.yaml's deploy.latency.batch_threads
    assert cpus["train"] == {1}
    threads = cluster_requests(dry_run, "threads")
    assert max(threads.get("deploy", {1})) <= 4  # a dry run leaves out threads: 1
