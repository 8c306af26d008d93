"""Run a workflow through a real SLURM cluster with snakemake-executor-plugin-slurm.

Needs the single-node cluster from ``.ci/slurm/start`` (skipped otherwise)::

    .ci/slurm/start && pytest -m slurm && .ci/slurm/stop

``run_through_slurm`` / ``run_locally`` are reusable: a test for the real demo
workflow can run it once through the CI profile and once locally and compare.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CI_PROFILE = REPO / ".ci" / "slurm" / "profile"
TEST_WORKFLOW = Path(__file__).resolve().parent / "slurm_workflow"

# Job states in which a SLURM job still occupies (or waits for) the cluster.
ACTIVE_STATES = "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED,RESIZING,STOPPED"


def _slurm_skip_reason() -> str | None:
    """None if sinfo reports a node that takes jobs, else why the SLURM tests must be skipped. A node busy
    with another worker's test job (allocated, mixed, completing) takes this test's jobs once it is free."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found); start the CI cluster with .ci/slurm/start"
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %t"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: SLURM controller not answering (run .ci/slurm/start)"
    if proc.returncode != 0:
        return f"sinfo failed ({proc.stderr.strip()}); start the CI cluster with .ci/slurm/start"
    states = [line.split()[-1].rstrip("*~#!%$@^-") for line in proc.stdout.splitlines() if line.strip()]
    if not any(s in ("idle", "mix", "alloc", "comp") for s in states):
        return f"no SLURM node up (sinfo: {proc.stdout.strip() or 'no nodes'}); run .ci/slurm/start"
    return None


pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def _require_slurm():
    # A fixture, not skipif: sinfo takes ~9 s to give up when no controller runs,
    # which runs deselected (-m "not slurm") would otherwise pay at collection.
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)


# --------------------------------------------------------------------------- helpers


@dataclass
class SnakemakeRun:
    """Outcome of one snakemake invocation (see run_through_slurm / run_locally)."""

    cmd: list[str]
    returncode: int
    output: str  # stdout and stderr, interleaved
    seconds: float
    timed_out: bool
    run_uuid: str | None = None  # SLURM job name used by the plugin for this run
    job_ids: list[str] = field(default_factory=list)  # SLURM job ids submitted by this run
    leftover_jobs: list[str] = field(default_factory=list)  # still active after the run (scancelled)

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.cmd)}\nrc={self.returncode} timed_out={self.timed_out} "
            f"after {self.seconds:.1f}s\n---- output (tail)\n{self.output[-6000:]}"
        )


def copy_workflow(src: Path, dest: Path) -> Path:
    """Copy a workflow directory (without outputs/.snakemake state) to dest."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".snakemake", "results", "__pycache__"))
    return dest


def _clean_env() -> dict[str, str]:
    # A surrounding SLURM allocation (SLURM_JOB_ID, ...) would confuse the plugin.
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def run_snakemake(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    extra_args: list[str] | tuple[str, ...] = (),
    timeout_s: int = 90,
) -> SnakemakeRun:
    """Run snakemake (this interpreter's) in workdir, hard-bounded by `timeout -k 10`.

    The outer `timeout` matters: a run whose status query never completes ignores
    SIGTERM, so it is SIGKILLed 10 s after timeout_s.
    """
    cmd = [
        "timeout", "-k", "10", str(timeout_s),
        sys.executable, "-m", "snakemake", *extra_args, *targets,
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.monotonic() - t0
    (Path(workdir) / "snakemake-test.log").write_text(proc.stdout)
    return SnakemakeRun(
        cmd=cmd,
        returncode=proc.returncode,
        output=proc.stdout,
        seconds=seconds,
        timed_out=proc.returncode in (124, 137),
    )


def _squeue_ids(run_uuid: str, states: str) -> list[str]:
    proc = subprocess.run(
        ["squeue", "--noheader", "--name", run_uuid, f"--states={states}", "--format=%i"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    return proc.stdout.split()


def job_states(run_uuid: str) -> dict[str, str]:
    """{job id: state} of all jobs (also finished ones, kept MinJobAge) of one run."""
    proc = subprocess.run(
        ["squeue", "--noheader", "--name", run_uuid, "--states=all", "--format=%i|%T"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    return dict(line.split("|", 1) for line in proc.stdout.split())


def run_through_slurm(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    extra_args: list[str] | tuple[str, ...] = (),
    timeout_s: int = 90,
    profile: Path = CI_PROFILE,
) -> SnakemakeRun:
    """Run the workflow in workdir through SLURM with `--profile profile`.

    Records the plugin's run id and submitted job ids; any job of this run still
    active afterwards is listed in `leftover_jobs` and cancelled, so a failing
    test does not block the cluster for the next one.
    """
    run = run_snakemake(workdir, targets, ["--profile", str(profile), *extra_args], timeout_s)
    m = re.search(r"SLURM run ID: ([0-9a-f-]+)", run.output)
    run.run_uuid = m.group(1) if m else None
    run.job_ids = re.findall(r"submitted with SLURM jobid (\d+)", run.output)
    if run.run_uuid:
        run.leftover_jobs = _squeue_ids(run.run_uuid, ACTIVE_STATES)
        if run.leftover_jobs:
            subprocess.run(["scancel", *run.leftover_jobs], timeout=15, check=False)
    return run


def run_locally(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    extra_args: list[str] | tuple[str, ...] = (),
    timeout_s: int = 90,
    cores: int = 2,
) -> SnakemakeRun:
    """Same workflow on the local executor, for comparison with run_through_slurm."""
    return run_snakemake(workdir, targets, ["--cores", str(cores), *extra_args], timeout_s)


def read_facts(path: Path) -> dict[str, str]:
    """key=value lines written by the test workflow's jobs."""
    facts = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts.setdefault(key.strip(), value.strip())
    return facts


@pytest.fixture
def slurm_workflow(tmp_path: Path) -> Path:
    return copy_workflow(TEST_WORKFLOW, tmp_path / "wf")


# ----------------------------------------------------------------------------- tests


def test_workflow_completes_through_slurm(slurm_workflow: Path):
    run = run_through_slurm(slurm_workflow, timeout_s=150)
    assert run.returncode == 0, run.describe()
    assert run.leftover_jobs == [], run.describe()
    assert run.run_uuid, run.describe()
    # 2 gpu_job + 1 cpu_job went through sbatch; gather/all are localrules.
    assert len(run.job_ids) == 3, run.describe()
    states = job_states(run.run_uuid)
    assert sorted(states) == sorted(run.job_ids), (states, run.job_ids)
    assert set(states.values()) == {"COMPLETED"}, states

    results = slurm_workflow / "results"
    for name in ("a", "b"):
        gpu = read_facts(results / f"gpu_{name}.txt")
        assert gpu["rule"] == "gpu_job"
        assert gpu["slurm_job_id"] in run.job_ids, gpu
        assert gpu["slurm_job_partition"] == "ci", gpu
        # The GPU was requested (--gpus=1 from resources gpu=1) and allocated.
        assert "gpu:1" in gpu.get("scontrol_TresPerJob", "") + gpu.get("scontrol_TresPerNode", ""), gpu
        assert gpu.get("scontrol_GRES", "").startswith("gpu"), gpu
        assert gpu["slurm_gpus_on_node"] == "1", gpu
        assert gpu["cuda_visible_devices"] != "", gpu

    cpu = read_facts(results / "cpu.txt")
    assert cpu["slurm_job_id"] in run.job_ids, cpu
    assert cpu["threads"] == "2" and cpu["slurm_cpus_per_task"] == "2", cpu
    assert cpu["scontrol_NumCPUs"] == "2", cpu
    assert cpu["scontrol_MinMemoryNode"] == "300M", cpu
    assert cpu["cuda_visible_devices"] == "", cpu  # no GPU for a job that did not ask

    summary = (results / "summary.txt").read_text()
    assert read_facts(results / "summary.txt")["slurm_job_id"] == "", "localrule must not run in SLURM"
    assert summary.count("rule=gpu_job") == 2 and summary.count("rule=cpu_job") == 1
    assert "localrule gather" in run.output

    ids = {read_facts(results / f)["slurm_job_id"] for f in ("gpu_a.txt", "gpu_b.txt", "cpu.txt")}
    assert ids == set(run.job_ids)


def test_failing_job_is_reported(slurm_workflow: Path):
    timeout_s = 90
    run = run_through_slurm(slurm_workflow, targets=["results/fail.txt"], timeout_s=timeout_s)
    assert not run.timed_out, "snakemake hung on a failed SLURM job\n" + run.describe()
    assert run.returncode != 0, run.describe()
    assert run.seconds < timeout_s
    assert run.leftover_jobs == [], run.describe()
    assert len(run.job_ids) == 1, run.describe()
    (jobid,) = run.job_ids
    # the job really ran inside SLURM and failed there
    started = read_facts(slurm_workflow / "results" / "fail.started")
    assert started["slurm_job_id"] == jobid
    assert job_states(run.run_uuid) == {jobid: "FAILED"}
    assert not (slurm_workflow / "results" / "fail.txt").exists()
    # ...and snakemake names the failed rule and the SLURM job
    assert "Error in rule fail" in run.output, run.describe()
    assert f"SLURM-job '{jobid}' failed" in run.output, run.describe()


# The project's own profiles/slurm, with what a user edits in it (the partition; no account, since
# the CI cluster keeps no accounting) and what the CI cluster needs (no slurmdbd: squeue for the
# status; short waits, as in .ci/slurm/profile, so that the test is quick) given on the command line,
# which overrides a profile.
PROJECT_PROFILE = REPO / "profiles" / "slurm"
ON_CI_CLUSTER = [
    "--default-resources", "slurm_partition=ci",
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1",
    "--latency-wait", "5",
]  # fmt: skip


def job_details(job_id: str) -> dict[str, str]:
    """A SLURM job's `scontrol show job` fields (kept MinJobAge after it ends)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=15, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S+)", shown))


def demo_workdir(folder: Path, variants: list[str], batch_size: int = 32) -> tuple[Path, list[str]]:
    """A copy of the repository with the demo and a tiny overlay of ``variants`` at ResNet-8, seed 0,
    trained on batches of ``batch_size`` for the demo's 64 iterations, whose deployments time their
    latency batch on both of the CI node's CPUs (calibrated and timed briefly, as in the test case).
    A run's job lasts about half a minute, so that the plugin's status check at 33 s finds it done."""
    import test_workflow as workflow

    tiny = {
        **workflow.TINY,
        "study": {**workflow.TINY["study"], "variants": variants},
        "recipe": {"training": {"batch_size": batch_size}},
        "deploy": {"calibration_images": 64, "latency": {"runs": 3, "warmup_runs": 1, "batch_threads": 2}},
    }
    folder.mkdir()
    workdir = workflow.copy_workflow(folder)
    return workdir, ["--configfile", "config/demo.yaml", workflow.write_config(workdir, "tiny.yaml", tiny)]


@pytest.mark.slow
def test_demo_through_slurm_matches_a_local_run(tmp_path: Path):
    """The real workflow (demo data, paper + the frozen pretrain -> fine-tune chain) through the
    project's SLURM profile gives the same weights and metrics as the same configuration run locally,
    with one submission per run (its training, evaluation and deployment) and one for the data."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = [
        "--max-threads",
        "2",
    ]  # the CI node has 2 CPUs; the same count locally keeps the runs bit-identical
    (slurm_dir, configs), (local_dir, _) = (
        demo_workdir(tmp_path / name, ["paper", "frozen"], batch_size=8) for name in ("slurm", "local")
    )
    # The local run computes while the SLURM run mostly waits for the plugin's status checks.
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(run_locally, local_dir, ["report"], [*configs, *threads], timeout_s=600)
        slurm_run = run_through_slurm(
            slurm_dir,
            ["report"],
            [*configs, *threads, *ON_CI_CLUSTER],
            timeout_s=600,
            profile=PROJECT_PROFILE,
        )
        local_run = local.result()
    assert slurm_run.returncode == 0, slurm_run.describe()
    assert local_run.returncode == 0, local_run.describe()
    assert not slurm_run.leftover_jobs
    assert (slurm_dir / "results" / "report.html").stat().st_size > 0  # localrules on this host
    # the data (demo archive, then preparation), then each run's training and deployment together
    assert len(slurm_run.job_ids) == 1 + 2, slurm_run.describe()
    for job_id in slurm_run.job_ids[1:]:
        # a run's group: the GPU of its training (1 CPU), the 2 CPUs its deployment times with, the larger
        # memory (8,000 MB of the training) and the two time limits added (ResNet-8: 20 + 4, and 15)
        job = job_details(job_id)
        assert "gpu:1" in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job
        assert (job["NumCPUs"], job["MinMemoryNode"], job["TimeLimit"]) == ("2", "8000M", "00:39:00"), job

    summary = "results/demo/summary.csv"
    assert (slurm_dir / summary).read_text().splitlines()[0] == (
        local_dir / summary
    ).read_text().splitlines()[0]
    for variant in ("paper", "frozen"):
        run_dir = f"results/demo/runs/{variant}/resnet8/seed0"
        remote, local = (
            torch.load(d / run_dir / "model.pt", weights_only=True) for d in (slurm_dir, local_dir)
        )
        assert all(torch.equal(remote[key], local[key]) for key in local), variant
        metrics = [json_metrics(d / run_dir / "eval.json") for d in (slurm_dir, local_dir)]
        assert metrics[0] == metrics[1], variant
    # cifar-resnet status reads the files the SLURM jobs wrote as it reads a local run's
    status = [sys.executable, "-m", "cifar_resnet.cli", "status", *configs]
    printed = subprocess.run(status, cwd=slurm_dir, capture_output=True, text=True, check=True).stdout
    assert re.search(
        r"^(\d+) done, 0 trained, 0 training, 0 stopped, 0 failed, 0 waiting of \1 runs$", printed, re.M
    ), printed


def json_metrics(path: Path) -> dict:
    import json

    metrics = json.loads(path.read_text())
    return {key: metrics[key] for key in ("test_accuracy", "test_loss", "confusion_matrix", "params", "macs")}


def prepare_locally(workdir: Path, configs: list[str]) -> None:
    """The demo's data, prepared on this host before a test whose subject is a run's SLURM job, which then
    waits for no data job (the same work, without a round of the plugin's status checks)."""
    # the options after --configfile, which takes every value up to the next option
    prepared = run_snakemake(workdir, ["resources/demo/prepared.pt"], [*configs, "--cores", "1"])
    assert prepared.returncode == 0, prepared.describe()


def cancel_when_running(
    workdir: Path, comment: str, deadline: float, options: tuple[str, ...] = (), ready: Path | None = None
) -> str | None:
    """``scancel`` with ``options`` the first running SLURM job submitted from ``workdir`` (the test's own,
    never another test's running beside it) whose comment (the plugin writes the rule or group there)
    holds ``comment``, once ``ready`` exists where it is given, as the cluster stops a job at its time
    limit; its id, or None."""
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["squeue", "--noheader", "--states=RUNNING", "--format=%i|%Z|%k"],
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
        for line in listed.splitlines():
            job_id, job_workdir, job_comment = line.split("|", 2)
            if (
                job_workdir == str(workdir.resolve())
                and comment in job_comment
                and (ready is None or ready.exists())
            ):
                subprocess.run(["scancel", *options, job_id], timeout=15, check=True)
                return job_id
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_a_run_stopped_by_the_cluster_is_resubmitted_with_larger_limits(tmp_path: Path):
    """`retries` of the project's profile: a run's job that the cluster stops (here cancelled while it
    trains) is submitted again with twice its time and memory limits, and the run then finishes."""
    from concurrent.futures import ThreadPoolExecutor

    workdir, configs = demo_workdir(tmp_path / "retry", ["paper"], batch_size=8)
    prepare_locally(workdir, configs)
    target = "results/demo/runs/paper/resnet8/seed0/deploy.json"
    extra = [*configs, *ON_CI_CLUSTER, "--retries", "1"]
    with ThreadPoolExecutor(1) as pool:
        cancelled = pool.submit(cancel_when_running, workdir, "run_demo_paper_8_0", time.monotonic() + 240)
        run = run_through_slurm(workdir, [target], extra, timeout_s=400, profile=PROJECT_PROFILE)
        cancelled = cancelled.result()
    assert run.returncode == 0, run.describe()
    assert cancelled in run.job_ids, (cancelled, run.describe())
    retried = run.job_ids[run.job_ids.index(cancelled) + 1 :]
    assert len(retried) == 1, run.describe()
    first, second = job_details(cancelled), job_details(retried[0])
    assert first["JobState"] == "CANCELLED" and second["JobState"] == "COMPLETED", (first, second)
    assert (first["TimeLimit"], second["TimeLimit"]) == ("00:39:00", "01:18:00")
    assert (first["MinMemoryNode"], second["MinMemoryNode"]) == ("8000M", "16000M")
    assert (workdir / target).stat().st_size > 0


@pytest.mark.slow
def test_a_run_the_cluster_sends_sigterm_saves_its_training_and_its_retry_resumes_there(tmp_path: Path):
    """`scancel --signal=TERM` while a run trains: the job saves its resume state at the next step, says
    where it stopped, and the profile's retry resumes from there rather than from the start."""
    from concurrent.futures import ThreadPoolExecutor

    # 4 epochs of 16 steps: the signal comes after the first, with three to go
    workdir, configs = demo_workdir(tmp_path / "term", ["paper"], batch_size=16)
    prepare_locally(workdir, configs)
    target = "results/demo/runs/paper/resnet8/seed0/deploy.json"
    run_dir = (workdir / target).parent
    extra = [*configs, *ON_CI_CLUSTER, "--retries", "1"]
    with ThreadPoolExecutor(1) as pool:
        # SIGTERM, as SLURM sends at a job's time limit, once an epoch is done and more are to come
        signalled = pool.submit(
            cancel_when_running,
            workdir,
            "run_demo_paper_8_0",
            time.monotonic() + 240,
            ("--signal=TERM",),
            run_dir / "history.csv",
        )
        run = run_through_slurm(workdir, [target], extra, timeout_s=400, profile=PROJECT_PROFILE)
        signalled = signalled.result()
    assert run.returncode == 0, run.describe()
    assert signalled in run.job_ids, (signalled, run.describe())
    assert len(run.job_ids[run.job_ids.index(signalled) + 1 :]) == 1, run.describe()
    logs = [workdir / "results/demo/logs/train/paper/resnet8/seed0.log"]
    logs += sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    text = "\n".join(path.read_text(errors="replace") for path in logs if path.is_file())
    stopped = re.search(r"Stopped by SIGTERM \(.*?\) at epoch (\d+)/\d+, step (\d+)", text)
    assert stopped, run.describe()
    assert re.search(rf"resumed from \S+ at epoch {stopped[1]}, step {stopped[2]}$", text, re.M), text[-3000:]
    assert (run_dir / "deploy.json").stat().st_size > 0
