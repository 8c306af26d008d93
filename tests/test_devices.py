"""claim_gpu hands concurrent jobs distinct GPUs, or shares of one; GPUs are simulated with
CIFAR_RESNET_GPU_COUNT."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cifar_resnet import devices
from cifar_resnet.devices import claim_gpu
from cifar_resnet.errors import StudyError

SRC = Path(__file__).resolve().parents[1] / "src"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
GPU_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "CIFAR_RESNET_GPU_COUNT",
    "CIFAR_RESNET_JOBS_PER_GPU",
    "SLURM_JOB_ID",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
)

# Claims a GPU, writes "<device> <CUDA_VISIBLE_DEVICES>" to argv[2], holds it until argv[3] exists.
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from cifar_resnet.devices import claim_gpu

    lock_dir, record, release = map(Path, sys.argv[1:4])
    with claim_gpu(lock_dir, log=lambda line: None, timeout=60) as device:
        record.write_text(f"{device} {os.environ.get('CUDA_VISIBLE_DEVICES')}")
        while not release.exists():
            time.sleep(0.05)
    """
)

# One training job of the Snakemake test: records the GPU it got and when it held it.
RECORDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from cifar_resnet.devices import claim_gpu

    with claim_gpu(Path("gpu-locks"), timeout=60) as device:
        start = time.time()
        time.sleep(2)
        end = time.time()
    Path(sys.argv[1]).write_text(json.dumps({"device": device, "start": start, "end": end}))
    """
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No GPU assignment of the machine running the tests leaks into them."""
    for name in GPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))


class Holder:
    def __init__(self, tmp_path: Path, name: str):
        self.record = tmp_path / f"{name}.record"
        self.release_file = tmp_path / f"{name}.release"
        script = tmp_path / "holder.py"
        script.write_text(HOLDER)
        arguments = [tmp_path / "locks", self.record, self.release_file]
        self.process = subprocess.Popen([sys.executable, script, *arguments])

    def wait_for_claim(self) -> str:
        deadline = time.monotonic() + 30
        while not self.record.exists():
            assert self.process.poll() is None, "the holder exited without claiming a GPU"
            assert time.monotonic() < deadline, "the holder claimed no GPU within 30 s"
            time.sleep(0.05)
        device, visible = self.record.read_text().split()
        assert visible == device
        return device

    def release(self) -> None:
        self.release_file.touch()
        assert self.process.wait(timeout=30) == 0


@pytest.fixture
def start_holder(tmp_path):
    holders = []

    def start(name: str) -> Holder:
        holders.append(Holder(tmp_path, name))
        return holders[-1]

    yield start
    for holder in holders:
        if holder.process.poll() is None:
            holder.process.kill()
            holder.process.wait()


def test_concurrent_holders_get_distinct_gpus_and_a_fourth_waits(monkeypatch, start_holder):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "3")
    holders = [start_holder(f"holder{index}") for index in range(3)]
    devices = [holder.wait_for_claim() for holder in holders]
    assert sorted(devices) == ["0", "1", "2"]

    fourth = start_holder("fourth")
    time.sleep(1.5)
    assert not fourth.record.exists(), "a fourth job got a GPU while all three were held"
    holders[1].release()
    assert fourth.wait_for_claim() == devices[1]


def test_a_holder_killed_with_sigkill_frees_its_gpu(monkeypatch, tmp_path, start_holder):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "1")
    holder = start_holder("holder")
    assert holder.wait_for_claim() == "0"
    locks = tmp_path / "locks"
    with pytest.raises(StudyError, match="No GPU slot became free"), claim_gpu(locks, timeout=0.5):
        pass

    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait()
    with claim_gpu(tmp_path / "locks", log=lambda line: None, timeout=5) as device:
        assert device == "0"


def test_jobs_per_gpu_lets_that_many_jobs_share_a_gpu_and_the_next_waits(monkeypatch, start_holder):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "1")
    monkeypatch.setenv("CIFAR_RESNET_JOBS_PER_GPU", "2")
    sharing = [start_holder(f"holder{index}") for index in range(2)]
    assert [holder.wait_for_claim() for holder in sharing] == ["0", "0"]

    third = start_holder("third")
    time.sleep(1.5)
    assert not third.record.exists(), "a third job got the GPU while its two slots were held"
    sharing[0].release()
    assert third.wait_for_claim() == "0"


def test_shared_gpus_fill_one_slot_on_every_gpu_before_a_second(monkeypatch, tmp_path, start_holder):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "2")
    monkeypatch.setenv("CIFAR_RESNET_JOBS_PER_GPU", "3")
    assert [start_holder(f"holder{index}").wait_for_claim() for index in range(2)] == ["0", "1"]
    lines = []
    with claim_gpu(tmp_path / "locks", log=lines.append, timeout=5) as device:
        assert device == "0"
    assert lines == [
        "using GPU 0 of 2, job slot 2 of 3 on it (CUDA_VISIBLE_DEVICES=0; CIFAR_RESNET_GPU_COUNT=2)"
    ]


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_a_malformed_jobs_per_gpu_is_a_study_error(monkeypatch, tmp_path, value):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "1")
    monkeypatch.setenv("CIFAR_RESNET_JOBS_PER_GPU", value)
    with (
        pytest.raises(StudyError, match=f"JOBS_PER_GPU must be .* at least 1, such as 4, not '{value}'"),
        claim_gpu(tmp_path),
    ):
        pass
    assert not list(tmp_path.iterdir()), "a lock was taken before the setting was checked"


def test_claim_sets_visible_devices_inside_and_restores_them_after(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "2")
    lines = []
    with claim_gpu(tmp_path, log=lines.append) as device:
        assert device == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert lines == ["using GPU 0 of 2 (CUDA_VISIBLE_DEVICES=0; CIFAR_RESNET_GPU_COUNT=2)"]


def test_an_exception_releases_the_gpu_and_restores_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "1")
    with pytest.raises(RuntimeError), claim_gpu(tmp_path, log=lambda line: None):
        raise RuntimeError("training diverged")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with claim_gpu(tmp_path, log=lambda line: None, timeout=0) as device:
        assert device == "0"


def test_visible_devices_set_before_the_run_are_the_pool(monkeypatch, tmp_path, start_holder):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "8")
    assert start_holder("holder").wait_for_claim() == "4"
    lines = []
    with claim_gpu(tmp_path / "locks", log=lines.append, timeout=5) as device:
        assert device == "6"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    assert lines[0].startswith("using GPU 1 of 2 (CUDA_VISIBLE_DEVICES=6;")


@pytest.mark.parametrize(
    "variables",
    [
        {"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "0"},
        {"SLURM_JOB_ID": "17", "SLURM_JOB_GPUS": "0"},
        {"SLURM_JOB_ID": "17", "SLURM_STEP_GPUS": "0"},
    ],
)
def test_gpus_assigned_by_slurm_are_kept(monkeypatch, tmp_path, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    before = dict(os.environ)
    lines = []
    with claim_gpu(tmp_path / "locks", log=lines.append) as device:
        assert device == "0"
        assert dict(os.environ) == before
    assert lines == ["using the GPUs SLURM assigned: 0"]
    assert not (tmp_path / "locks").exists()


def test_a_slurm_job_without_gpus_uses_the_usual_pool(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "1")
    with claim_gpu(tmp_path, log=lambda line: None) as device:
        assert device == "0"


@pytest.mark.parametrize(
    "variables",
    [{"CIFAR_RESNET_GPU_COUNT": "0"}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}],
)
def test_without_gpus_the_job_trains_on_the_cpu(monkeypatch, tmp_path, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    before = dict(os.environ)
    lines = []
    with claim_gpu(tmp_path / "locks", log=lines.append) as device:
        assert device is None
        assert dict(os.environ) == before
    assert lines[0].startswith("no GPU visible")
    assert lines[0].endswith("training on the CPU")
    assert not (tmp_path / "locks").exists()


def test_device_count_argument_overrides_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "4")
    with claim_gpu(tmp_path, device_count=0, log=lambda line: None) as device:
        assert device is None


def test_a_malformed_gpu_count_is_a_study_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CIFAR_RESNET_GPU_COUNT", "two")
    with (
        pytest.raises(StudyError, match="CIFAR_RESNET_GPU_COUNT must be a whole number"),
        claim_gpu(tmp_path),
    ):
        pass


def test_without_override_the_count_comes_from_torch(tmp_path):
    import torch

    with claim_gpu(tmp_path, log=lambda line: None) as device:
        assert (device is None) == (torch.cuda.device_count() == 0)


@pytest.mark.slow  # Snakemake
@pytest.mark.parametrize("gpus, jobs_per_gpu", [(2, 1), (1, 2)])
def test_snakemake_jobs_running_at_once_get_distinct_gpu_slots(tmp_path, gpus, jobs_per_gpu):
    """4 jobs with gpu=1 under --resources gpu=2: on 2 simulated GPUs never two on one GPU; on 1 GPU
    shared by 2 jobs, both run on it at once."""
    (tmp_path / "record.py").write_text(RECORDER)
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            rule all:
                input: expand("runs/{{job}}.json", job=range(4))

            rule train:
                output: "runs/{{job}}.json"
                resources: gpu=1
                shell: "{shlex.quote(sys.executable)} record.py {{output}}"
            """
        )
    )
    environment = {
        **os.environ,
        "CIFAR_RESNET_GPU_COUNT": str(gpus),
        "CIFAR_RESNET_JOBS_PER_GPU": str(jobs_per_gpu),
    }
    command = [SNAKEMAKE, "--cores", "4", "--resources", "gpu=2", "--snakefile", "Snakefile"]
    completed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr

    runs = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs").glob("*.json"))]
    assert len(runs) == 4
    assert {run["device"] for run in runs} == {str(index) for index in range(gpus)}
    overlapping = [
        (first, second)
        for index, first in enumerate(runs)
        for second in runs[index + 1 :]
        if first["start"] < second["end"] and second["start"] < first["end"]
    ]
    assert overlapping, "no two jobs ran at once, so the test proves nothing"
    for run in runs:
        running = [other for other in runs if other["start"] <= run["start"] < other["end"]]
        assert len(running) <= 2
        assert sum(other["device"] == run["device"] for other in running) <= jobs_per_gpu


@pytest.fixture
def no_nvidia(monkeypatch, tmp_path):
    """A machine with neither nvidia-smi on PATH nor the driver's GPU folder."""
    for name in GPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_GPUS", tmp_path / "proc" / "gpus")
    return tmp_path


def test_gpus_are_counted_by_nvidia_smi(no_nvidia):
    smi = no_nvidia / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-2)'\n"
    )
    smi.chmod(0o755)
    lines = []
    with claim_gpu(no_nvidia / "locks", log=lines.append) as device:
        assert device == "0"
    assert lines == ["using GPU 0 of 2 (CUDA_VISIBLE_DEVICES=0; 2 GPUs listed by nvidia-smi)"]


def test_without_nvidia_smi_the_drivers_gpu_folders_count(no_nvidia):
    for address in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0"):
        (no_nvidia / "proc" / "gpus" / address).mkdir(parents=True)
    assert devices.nvidia_gpu_count() == (3, f"in {no_nvidia / 'proc' / 'gpus'}")


def test_without_a_driver_jobs_train_on_the_cpu_and_torch_is_not_imported(no_nvidia):
    code = (
        "import sys; from pathlib import Path; from cifar_resnet import devices\n"
        f"devices.NVIDIA_DRIVER_GPUS = Path({str(no_nvidia / 'proc')!r})\n"
        f"with devices.claim_gpu(Path({str(no_nvidia / 'locks')!r}), log=print) as device:\n"
        "    print(device, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert output.stdout.splitlines() == [
        "no GPU visible (0 GPUs (no NVIDIA driver)): training on the CPU",
        "None False",
    ]
