"""What each process of the workflow imports, each checked in a fresh interpreter.

The Snakemake main process (the Snakefile and rules/*.smk, read by every command, dry runs included)
imports only the standard library and what Snakemake itself requires. A job runs in its rule's conda
environment: a report job must not import torch, and a data, training or evaluation job must not import
the report libraries; the download job, which only fetches and verifies an archive, imports neither
torch nor numpy. The imports come from the sources themselves (the workflow files' import statements,
each script's), and the scripts and their environments from the rules' ``script:`` and ``conda:``
directives, so the test follows the workflow as it changes.

The ``cifar-resnet`` command imports torch (seconds) only in the subcommand that trains, the benchmark.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]

# What a process must not import, by the conda environment its rule runs in.
FORBIDDEN = {
    "workflow/envs/report.yaml": ("torch",),
    "workflow/envs/train.yaml": ("pandas", "seaborn", "matplotlib", "scipy"),
}
# What a job must not import besides its environment's list, by rule.
RULE_FORBIDDEN = {"download": ("torch", "numpy")}


def rule_scripts() -> dict[str, tuple[Path, str]]:
    """{rule: (script, conda environment relative to the repository)} for every ``script:`` rule."""
    rules = {}
    for path in WORKFLOW_FILES:
        blocks = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            script = re.search(r'^\s+script:\s+"([^"]+)"', body, re.M)
            conda = re.search(r'^\s+conda:\s+"([^"]+)"', body, re.M)
            if script:
                assert conda, f"rule {name} in {path.name} runs a script without a conda environment"
                environment = (path.parent / conda[1]).resolve().relative_to(ROOT).as_posix()
                rules[name] = ((path.parent / script[1]).resolve(), environment)
    return rules


def script_imports(script: Path) -> str:
    """The script's import statements (wherever they stand in it), as code to run."""
    tree = ast.parse(script.read_text(), filename=str(script))
    return "\n".join(
        ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
    )


def workflow_imports() -> str:
    """The import statements of the Snakefile and the rules (at the start of a line, one line or a
    parenthesised list), which the Snakemake main process runs."""
    statement = re.compile(r"^(?:import|from) [^\n(]*(?:\([^)]*\))?[^\n]*", re.M)
    return "\n".join(match for path in WORKFLOW_FILES for match in statement.findall(path.read_text()))


def requirement_closure(distribution: str) -> set[str]:
    """``distribution`` and everything it requires, transitively, without extras (canonical names)."""
    found, pending = set(), [distribution]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        found.add(name)
        for requirement in map(Requirement, importlib.metadata.requires(name) or []):
            if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def modules_of(distributions: set[str]) -> set[str]:
    """The top-level modules the installed ``distributions`` provide."""
    return {
        module
        for module, providers in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(provider) in distributions for provider in providers)
    }


def imported_modules(code: str) -> set[str]:
    """The top-level packages in sys.modules after running ``code`` in a fresh interpreter that imports
    this checkout's package."""
    report = "import sys\nprint(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    }
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"the imports failed:\n{code}\n{result.stderr[-3000:]}"
    return set(result.stdout.split())


RULES = rule_scripts()


@pytest.mark.slow  # a Python process per job, most importing torch
@pytest.mark.parametrize(
    ("script", "environment", "forbidden"),
    [
        pytest.param(script, environment, FORBIDDEN[environment] + RULE_FORBIDDEN.get(rule, ()), id=rule)
        for rule, (script, environment) in sorted(RULES.items())
    ],
)
def test_a_job_imports_nothing_its_environment_should_not_need(script, environment, forbidden):
    found = sorted(imported_modules(script_imports(script)) & set(forbidden))
    assert not found, f"{script.name} (run in {environment}) imports {', '.join(found)}"


def test_the_rules_with_their_own_import_limits_exist():
    assert set(RULE_FORBIDDEN) <= set(RULES)


def test_the_snakemake_main_process_imports_only_the_standard_library_and_snakemakes_dependencies():
    """So that a login node whose environment holds Snakemake alone can read the workflow, check the
    configuration and plan the jobs."""
    code = workflow_imports()
    assert "cifar_resnet.config" in code and "cifar_resnet.preflight" in code  # the study, the checks
    allowed = set(sys.stdlib_module_names) | modules_of(requirement_closure("snakemake")) | {"cifar_resnet"}
    allowed.add("cython_runtime")  # the module every Cython extension (pyyaml's, among them) registers
    found = sorted(name for name in imported_modules(code) - allowed if not name.startswith("_"))
    assert not found, f"the Snakefile and rules import {', '.join(found)}"


def test_every_snakemake_script_is_run_by_a_rule():
    """A script that uses the `snakemake` object is checked above only if a rule runs it."""
    run = {script for script, _ in RULES.values()}
    assert len(run) >= 2
    for script in sorted((ROOT / "workflow" / "scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        uses_snakemake = any(isinstance(node, ast.Name) and node.id == "snakemake" for node in ast.walk(tree))
        assert uses_snakemake == (script in run), (
            f"{script.name}: uses the snakemake object: {uses_snakemake}, run by a rule: {script in run}"
        )


def test_importing_the_command_line_imports_no_torch():
    assert "torch" not in imported_modules("import cifar_resnet.cli")


def test_status_and_every_help_import_no_torch(tmp_path):
    """``cifar-resnet status`` and ``--help`` answer without torch: the benchmark's modules and the
    release's tensors are imported by their subcommands alone."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    printed = tmp_path / "printed.txt"
    code = f"""
import contextlib, io, os
os.chdir({str(tmp_path)!r})
from cifar_resnet import cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    for command in ([], ["benchmark"], ["status"], ["release"]):
        with contextlib.suppress(SystemExit):
            cli.parse_args([*command, "--help"])
    cli.main(["status"])
open({str(printed)!r}, "w").write(out.getvalue())
"""
    found = imported_modules(code)
    text = printed.read_text()
    assert "usage: cifar-resnet benchmark" in text and "usage: cifar-resnet release" in text
    assert "nothing has run in" in text  # the status itself
    assert "torch" not in found
