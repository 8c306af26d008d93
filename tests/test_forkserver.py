"""The fork server: a job handed over runs in a process forked from it, with the job's directory,
environment, arguments and streams, ends as it would have in its own process (exit status, signals,
the death of the process Snakemake started), and without a server, or from another Python, a job
runs itself."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cifar_resnet import forkserver

# A job script as Snakemake writes it: a preamble that defines `snakemake`, then the script. It hands
# itself over, then reports where it ran; the arguments say how it ends.
JOB = textwrap.dedent(
    """
    import os, signal, sys, time
    snakemake = globals().get("snakemake", {"rule": "demo"})
    if sys.argv[1] == "late":
        time.sleep(1.0)
    from cifar_resnet import forkserver
    from cifar_resnet.timings import process_age
    forkserver.hand_over(snakemake)
    # "sleep": until a signal, SIGTERM ending it with 7 and Ctrl-C with 130, both handled before the
    # first line tells the test that it runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(7))
    try:
        where = [os.getpid(), forkserver.job_process, os.getcwd(), os.environ.get("JOB_SETTING"),
                 "torch" in sys.modules, snakemake["rule"], f"{process_age():.2f}"]
        print("|".join(map(str, where)), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        if sys.argv[1] == "sleep":
            time.sleep(60)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(int(sys.argv[2]))
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fork server as the workflow's onstart starts it, ready (its socket bound)."""
    log = tmp_path_factory.mktemp("server") / "fork-server.log"
    forkserver.start(log)
    address = Path(os.environ[forkserver.ADDRESS_VARIABLE])
    deadline = time.monotonic() + 120
    while not address.exists():
        assert forkserver.server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the fork server did not start listening"
        time.sleep(0.1)
    yield forkserver.server
    forkserver.stop()
    assert not address.exists()


def job(tmp_path: Path, *arguments: str, python: str = sys.executable, **options) -> subprocess.Popen:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    environment = os.environ | {"JOB_SETTING": "from the job"}
    return subprocess.Popen(
        [python, str(script), *arguments],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_job_runs_forked_with_its_own_directory_environment_and_streams(server, tmp_path):
    process = job(tmp_path, "exit", "3")
    out, err = process.communicate(timeout=60)
    pid, job_process, cwd, setting, torch_loaded, rule, _ = out.strip().split("|")
    assert process.returncode == 3
    assert int(pid) != process.pid and int(job_process) == process.pid
    # The job's script never imported torch: the forked process has it from the server.
    assert (cwd, setting, torch_loaded, rule) == (str(tmp_path), "from the job", "True", "demo")
    assert "to stderr" in err


def test_a_forked_jobs_age_counts_from_the_start_of_the_process_snakemake_started(server, tmp_path):
    process = job(tmp_path, "late", "0")
    out, _ = process.communicate(timeout=60)
    pid, _, _, _, _, _, age = out.strip().split("|")
    assert process.returncode == 0 and int(pid) != process.pid
    assert float(age) >= 1.0  # the job slept a second before it handed itself over


def test_without_a_server_a_job_runs_in_its_own_process(tmp_path, monkeypatch):
    monkeypatch.setenv(forkserver.ADDRESS_VARIABLE, str(tmp_path / "nobody-listens"))
    process = job(tmp_path, "exit", "0")
    out, _ = process.communicate(timeout=60)
    pid, job_process, *_ = out.split("|")
    assert process.returncode == 0
    assert int(pid) == process.pid and job_process == "None"


def test_a_job_of_another_python_runs_in_its_own_process(server, tmp_path):
    # The same interpreter by another name in its environment stands for another environment's Python.
    names = ("python", "python3", f"python3.{sys.version_info.minor}")
    bin_dir = Path(sys.executable).parent
    other_python = next(
        bin_dir / n for n in names if bin_dir / n != Path(sys.executable) and (bin_dir / n).exists()
    )
    process = job(tmp_path, "exit", "0", python=str(other_python))
    out, _ = process.communicate(timeout=60)
    pid, job_process, *_ = out.split("|")
    assert int(pid) == process.pid and job_process == "None"


def test_a_broken_request_is_declined_and_the_server_serves_on(server, tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(os.environ[forkserver.ADDRESS_VARIABLE])
        connection.sendall(struct.pack("!Q", 5) + b"junk!")
        assert connection.recv(forkserver.STATUS.size) == forkserver.STATUS.pack(0)
    process = job(tmp_path, "exit", "0")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and int(out.split("|")[0]) != process.pid


def test_a_signal_to_the_job_reaches_the_forked_process_and_ends_both(server, tmp_path):
    process = job(tmp_path, "sleep", "0")
    forked = int(process.stdout.readline().split("|")[0])
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode == 7  # the forked process's handler ran and chose the status
    assert not alive(forked)


def test_ctrl_c_reaches_the_forked_process_as_keyboard_interrupt(server, tmp_path):
    process = job(tmp_path, "sleep", "0")
    forked = int(process.stdout.readline().split("|")[0])
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 130
    assert not alive(forked)


def test_a_killed_job_process_takes_its_forked_process_with_it(server, tmp_path):
    process = job(tmp_path, "sleep", "0")
    forked = int(process.stdout.readline().split("|")[0])
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(forked):
        assert time.monotonic() < deadline, "the forked job outlived its process"
        time.sleep(0.05)


def test_the_server_ends_when_the_workflow_that_started_it_is_gone(tmp_path):
    program = (
        "import os, sys, time; from pathlib import Path; from cifar_resnet import forkserver; "
        "forkserver.start(Path(sys.argv[1])); print(forkserver.server.pid, flush=True); os._exit(0)"
    )
    parent = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "log")], capture_output=True, text=True, check=True
    )
    server_pid = int(parent.stdout)
    deadline = time.monotonic() + 120
    while alive(server_pid):
        assert time.monotonic() < deadline, "the fork server outlived the workflow"
        time.sleep(0.2)
