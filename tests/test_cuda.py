"""The GPU path on CUDA (``pytest -m cuda``; skipped without CUDA): a tiny training in every mode, two
deterministic runs bit-identical, a killed job resumed identically, two jobs sharing one GPU, and the
benchmark's smallest form. ``python -m tools.gpu_check`` runs these first. They train through the same
helpers as the CPU tests of tests/test_runtime.py."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_runtime import check_trained_and_evaluated, switched, train_switched
from test_train import check_kill_and_resume, one_thread, run  # noqa: F401  (one_thread: autouse)

from cifar_resnet import cli
from cifar_resnet import runtime as runtime_module
from cifar_resnet.devices import JOBS_PER_GPU_VARIABLE, claim_gpu
from cifar_resnet.tensors import load_tensors

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
ROOT = Path(__file__).resolve().parents[1]
EXECUTIONS = ("eager", "compile", "compile+cuda_graphs")


def identical(first: Path, second: Path) -> bool:
    expected, got = load_tensors(first / "model.pt"), load_tensors(second / "model.pt")
    return expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)


@pytest.mark.parametrize(
    ("execution", "bf16", "channels_last"),
    list(itertools.product(EXECUTIONS, (False, True), (False, True))),
)
def test_every_mode_trains_and_evaluates_like_eager_on_cuda(
    study, prepared, tmp_path, execution, bf16, channels_last
):
    switches = {
        "compile": execution != "eager",
        "cuda_graphs": execution.endswith("cuda_graphs"),
        "bf16": bf16,
        "channels_last": channels_last,
    }
    config = switched(study, device="cuda", **switches)
    skips_before = runtime_module.compile_counts()["cuda_graph_skips"]
    summary = train_switched(config, prepared, tmp_path)
    ran = summary["execution"]
    assert ran["device"] == "cuda" and ran["optimizer"] == "fused"
    assert ran["applied"] == [switch for switch in runtime_module.SWITCHES if switches[switch]]
    assert runtime_module.compile_counts()["cuda_graph_skips"] == skips_before, "CUDA graphs were skipped"
    check_trained_and_evaluated(config, prepared, tmp_path, "bf16" if bf16 else "tf32")


def test_two_deterministic_runs_are_bit_identical_on_cuda(study, prepared, tmp_path):
    config = switched(study, device="cuda", compile=True, bf16=True, channels_last=True, deterministic=True)
    for name in ("first", "second"):
        summary = train_switched(config, prepared, tmp_path / name)
        assert summary["execution"]["deterministic"]
    assert identical(tmp_path / "first", tmp_path / "second")


def test_a_killed_job_resumes_to_identical_results_on_cuda_in_deterministic_mode(study, prepared, tmp_path):
    config = run(study, "plateau", unit="epochs", duration=40, batch_size=16)
    config["runtime"].update(device="cuda", bf16=True, channels_last=True, compile=False, deterministic=True)
    check_kill_and_resume(config, prepared, tmp_path, into_epoch=0.0)  # a GPU epoch is short


JOB = """
import json, sys
from pathlib import Path
from cifar_resnet.devices import claim_gpu
from cifar_resnet.run import Outputs, train_job
config, prepared, folder, locks = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
names = ("model.pt", "history.csv", "train.json", "eval.json")
with claim_gpu(Path(locks)):
    train_job(config, prepared, Outputs(*(folder / name for name in names)), folder / "resume.pt")
"""


def test_two_jobs_share_one_gpu_under_jobs_per_gpu_and_get_the_same_results(
    study, prepared, tmp_path, monkeypatch
):
    """This process holds the GPU's first job slot and trains while a job process takes the second and
    trains the same deterministic run: both run at once on GPU 0, and sharing changes nothing."""
    monkeypatch.setenv(JOBS_PER_GPU_VARIABLE, "2")
    config = switched(study, device="cuda", bf16=True, channels_last=True, deterministic=True)
    claimed = []
    arguments = [json.dumps(config), str(prepared), str(tmp_path / "job"), str(tmp_path / "locks")]
    with claim_gpu(tmp_path / "locks", log=claimed.append):
        job = subprocess.Popen(
            [sys.executable, "-c", JOB, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        train_switched(config, prepared, tmp_path / "here")
        output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output
    assert "job slot 1 of 2" in claimed[0] and "job slot 2 of 2" in output
    assert identical(tmp_path / "here", tmp_path / "job")


def test_the_benchmarks_smallest_form_measures_every_mode_on_cuda(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli.main(["benchmark", "--small", "--depths", "8", "--device", "cuda", "--out", str(tmp_path)])
    frame = pd.read_csv(tmp_path / "benchmark.csv", keep_default_na=False, na_values=[""])
    assert (frame["rounds"] == 3).all() and (frame["images_per_s"] > 0).all(), frame["note"].tolist()
    assert (frame["peak_memory_mb"] > 0).all() and (frame["device"] == "cuda").all()
    assert set(frame["pipeline"]) == {"ours", "classical", "packed", "sequential", "jobs"}
