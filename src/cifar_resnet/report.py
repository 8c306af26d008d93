"""The HTML report as a file a rule makes, so that ``snakemake report`` works as users type it.

Snakemake builds its report only when asked by a command-line flag (``--report FILE``), never as a
job's output. The ``report`` rule therefore runs that command on the same Snakefile and configuration,
as Snakemake passes them to the jobs it spawns; the nested call reads the finished jobs' records and
runs no job."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output


def write_report(
    path: str | Path, snakefile: str | Path, configfiles: Sequence[Path], config_args: Sequence[str], log: str
) -> None:
    """``snakemake --report`` of ``snakefile`` with the ``--configfile`` and ``--config`` arguments of the
    command that runs the rule, written atomically to ``path``; its output goes to ``log``."""
    with atomic_output(path) as temporary, open(log, "w") as log_file:
        command = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(snakefile),
            "--report",
            str(temporary),
        ]
        if configfiles:
            command += ["--configfile", *map(str, configfiles)]
        if config_args:
            command += ["--config", *config_args]
        log_file.write(" ".join(command) + "\n")
        log_file.flush()
        if subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT).returncode:
            raise StudyError(f"snakemake --report failed: its output is in {log}.")
