"""The runtime switches: torch.compile's mode and the step marks that CUDA graph replay needs, and
every switch PyTorch offers on the CPU trained for real under ``runtime.switches_on_cpu``: the loss
falls, evaluation agrees with eager fp32, and a stopped run resumes to identical results."""

import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from test_train import one_thread, outputs, run, trainer_of  # noqa: F401  (one_thread: autouse)

from cifar_resnet import checkpoint, datasets, sources
from cifar_resnet import runtime as runtime_module
from cifar_resnet.datasets import Split
from cifar_resnet.demo import write_demo_archive
from cifar_resnet.errors import StudyError
from cifar_resnet.evaluate import evaluate_split
from cifar_resnet.files import read_json
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.run import train_job
from cifar_resnet.runtime import Runtime
from cifar_resnet.tensors import load_tensors
from cifar_resnet.train import make_optimizer, train_step

CPU = torch.device("cpu")
EAGER_FP32 = {"compile": False, "bf16": False, "channels_last": False, "cuda_graphs": False}


def runtime_config(**settings) -> dict:
    """A ``runtime`` section: eager fp32 on the CPU, with ``settings``."""
    config = {**EAGER_FP32, "device": "cpu", "deterministic": False, "switches_on_cpu": False}
    return {**config, "eval_batch_size": 1000, **settings}


@pytest.mark.parametrize(
    ("device", "compile", "cuda_graphs", "graphed"),
    [("cuda", True, True, True), ("cuda", True, False, False), ("cpu", True, True, False)],
)
def test_cuda_graphs_compile_reduce_overhead_and_mark_every_step(
    monkeypatch, device, compile, cuda_graphs, graphed
):
    config = runtime_config(compile=compile, cuda_graphs=cuda_graphs, switches_on_cpu=True)
    runtime = Runtime.resolve(config, torch.device(device))
    compile_modes, step_marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode, **_: compile_modes.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: step_marks.append(1))
    runtime.forward_of(torch.nn.Identity())
    runtime.mark_step()
    assert compile_modes == ["reduce-overhead" if graphed else "default"]
    assert step_marks == ([1] if graphed else [])
    assert runtime.not_applied == (() if graphed or not cuda_graphs else ("cuda_graphs",))


def test_with_cuda_graphs_every_training_step_and_evaluation_batch_is_marked(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    # As on CUDA under compile with CUDA graphs, but eager here: only the marks are counted.
    runtime = replace(Runtime.resolve(runtime_config(eval_batch_size=4), CPU), cuda_graphs=True)
    model = build_model(ModelSpec(8))
    adam = {"name": "adam", "lr": 0.01, "weight_decay": 0}
    optimizer = make_optimizer(model.parameters(), adam, runtime)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6) % 10
    mean, std = torch.full((3,), 120.0), torch.full((3,), 60.0)
    for _ in range(2):
        train_step(model, optimizer, images, labels, mean, std, runtime)
    assert len(marks) == 2
    evaluate_split(model, Split(images, labels), mean, std, runtime)
    assert len(marks) == 4  # two evaluation batches of at most 4


# --- the switches on the CPU (runtime.switches_on_cpu): the code a GPU job runs ------------------

# Evaluation under the switches against eager fp32 on the same weights, over the validation images:
# bf16 keeps 8 bits of mantissa, so the loss may move by a few per cent; fp32 compiled code reorders
# sums only; on CUDA, fp32 convolutions run in TF32 (10 bits) in both.
TOLERANCES = {"bf16": (0.03, 2), "tf32": (0.01, 2), "fp32": (1e-4, 1)}  # (rel. loss, predictions that differ)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """80 training and 20 validation images: bf16 on a CPU without bf16 instructions steps ResNet-8 five
    times slower than fp32, and the compiled runs train twice."""
    folder = tmp_path_factory.mktemp("data")
    write_demo_archive(folder / "demo.tar.gz", seed=0, train_size=100, test_size=20)
    datasets.prepare_dataset(
        folder / "demo.tar.gz", folder / "prepared.pt", sources.get_source("demo"), 0.2, 0
    )
    return folder / "prepared.pt"


def switched(study, device="cpu", **switches) -> dict:
    """ResNet-8 on the paper recipe for 3 epochs of batches of 16, validated in batches of 12 (the last
    validation batch is a smaller one), with ``switches`` on and acting on the CPU."""
    config = run(study, "paper", unit="epochs", duration=3, batch_size=16)
    config["runtime"].update(EAGER_FP32, **switches, device=device, switches_on_cpu=True, eval_batch_size=12)
    return config


def train_switched(config, prepared, folder, checkpoint_interval=60.0) -> dict:
    """The training job with ``config``'s switches, its evaluation included."""
    return train_job(
        config, prepared, outputs(folder), folder / "resume.pt", checkpoint_interval=checkpoint_interval
    )


def eager_fp32_validation(config, prepared, folder):
    """The validation loss, accuracy and number of images of ``folder``'s model, evaluated eagerly in fp32."""
    eager = {**config, "runtime": {**config["runtime"], **EAGER_FP32, "switches_on_cpu": False}}
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    trainer = trainer_of(eager, data)
    trainer.model.load_state_dict(load_tensors(folder / "model.pt"))
    result = evaluate_split(trainer.model, trainer.val, trainer.mean, trainer.std, trainer.runtime)
    return result.loss, result.accuracy, len(trainer.val.labels)


def check_trained_and_evaluated(config, prepared, folder, precision):
    """The loss is finite and falls, and the switches' validation agrees with eager fp32's."""
    history = [row.split(",") for row in (folder / "history.csv").read_text().splitlines()[1:]]
    train_losses = [float(row[3]) for row in history]
    assert all(map(math.isfinite, train_losses)) and train_losses[-1] < 0.9 * train_losses[0], train_losses
    val_loss, val_accuracy = float(history[-1][5]), float(history[-1][6])  # the final model's, switched
    eager_loss, eager_accuracy, images = eager_fp32_validation(config, prepared, folder)
    loss_tolerance, differing = TOLERANCES[precision]
    assert val_loss == pytest.approx(eager_loss, rel=loss_tolerance)
    assert round(abs(val_accuracy - eager_accuracy) * images) <= differing


def test_without_switches_on_cpu_the_cpu_trains_eager_fp32_nchw_with_the_foreach_optimizer(study, prepared):
    config = run(study, "paper", depth=8)
    config["runtime"].update(compile=True, bf16=True, channels_last=True, switches_on_cpu=False)
    trainer = trainer_of(config, datasets.load_prepared(prepared))
    assert trainer.forward is trainer.model and trainer.optimizer.defaults["foreach"]
    assert trainer.model.backbone[0].weight.is_contiguous()
    ran = trainer.runtime.execution(trainer.optimizer)
    assert ran["applied"] == [] and ran["not_applied"] == ["compile", "bf16", "channels_last"]
    assert ran["optimizer"] == "foreach"


@pytest.mark.parametrize(("name", "kernels"), [("sgd", "fused"), ("adam", "fused"), ("nadam", "foreach")])
def test_the_optimizer_is_fused_where_it_has_fused_kernels_and_foreach_otherwise(name, kernels):
    """Where the runtime allows fused kernels (here the CPU under switches_on_cpu, as on CUDA): SGD and
    Adam use them, NAdam, which has none, uses foreach; with the switches off every optimizer is foreach."""
    settings = {"name": name, "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False}
    parameters = list(build_model(ModelSpec(8)).parameters())
    for switches_on_cpu, expected in ((True, kernels), (False, "foreach")):
        runtime = Runtime.resolve(runtime_config(switches_on_cpu=switches_on_cpu), CPU)
        optimizer = make_optimizer(parameters, settings, runtime)
        assert type(optimizer).__name__.lower() == name
        used = {kind for kind in ("fused", "foreach") if optimizer.defaults.get(kind)}
        assert used == {expected}, (switches_on_cpu, optimizer.defaults)


def test_under_switches_on_cpu_bf16_channels_last_and_the_fused_optimizer_act_on_the_cpu(study, prepared):
    config = switched(study, bf16=True, channels_last=True)
    trainer = trainer_of(config, datasets.load_prepared(prepared))
    assert trainer.optimizer.defaults["fused"]
    formats = []
    for block in trainer.model.backbone:  # every activation stays NHWC, none falls back to NCHW
        block.register_forward_hook(
            lambda module, inputs, output: formats.append(
                output.is_contiguous(memory_format=torch.channels_last)
            )
        )
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with trainer.runtime.autocast():
        channels_last_images = (images.float() / 255).contiguous(memory_format=trainer.runtime.memory_format)
        logits = trainer.forward(channels_last_images)
    assert (
        logits.dtype == torch.bfloat16 and all(formats[:-1]) and len(formats) == len(trainer.model.backbone)
    )
    ran = trainer.runtime.execution(trainer.optimizer)
    assert ran["applied"] == ["bf16", "channels_last"] and ran["optimizer"] == "fused"


@pytest.mark.parametrize(
    ("switches", "precision"),
    [({}, "fp32"), ({"bf16": True}, "bf16"), ({"channels_last": True}, "fp32")],
    ids=["fused-optimizer", "bf16", "channels_last"],
)
def test_each_eager_switch_trains_and_evaluates_like_eager_fp32(
    study, prepared, tmp_path, switches, precision
):
    config = switched(study, **switches)
    summary = train_switched(config, prepared, tmp_path)
    assert summary["execution"]["applied"] == list(switches) and summary["execution"]["optimizer"] == "fused"
    check_trained_and_evaluated(config, prepared, tmp_path, precision)


@pytest.fixture(scope="module")
def compiled_runs(study, prepared, tmp_path_factory):
    """Compile with bf16 and channels_last (the switches that interact): an uninterrupted run, and the
    same run stopped right after its resume state of epoch 2 was saved (as a kill then would), then
    resumed by a fresh ``train_job``. In one process, so that the graphs are compiled once; the
    trainer's real kill, in a separate process, is test_train's."""
    torch.set_num_threads(1)
    config = switched(study, compile=True, bf16=True, channels_last=True)
    folder = tmp_path_factory.mktemp("compiled")
    graphs_before = runtime_module.compile_counts()["compiled_graphs"]
    uninterrupted = train_switched(config, prepared, folder / "uninterrupted")
    graphs = runtime_module.compile_counts()["compiled_graphs"] - graphs_before

    save = checkpoint.save_resume_state

    def killed_after_saving(path, progress, *state):
        save(path, progress, *state)
        if progress["epoch"] == 2:
            raise KeyboardInterrupt

    checkpoint.save_resume_state = killed_after_saving
    try:
        with pytest.raises(KeyboardInterrupt):
            train_switched(config, prepared, folder / "resumed", checkpoint_interval=0)
    finally:
        checkpoint.save_resume_state = save
    assert load_tensors(folder / "resumed" / "resume.pt")["progress"]["epoch"] == 2
    resumed = train_switched(config, prepared, folder / "resumed")
    return config, folder, uninterrupted, resumed, graphs


@pytest.mark.slow  # compiled_runs: torch.compile
def test_compile_with_bf16_and_channels_last_trains_and_evaluates_like_eager(prepared, compiled_runs):
    config, folder, uninterrupted, _, graphs = compiled_runs
    ran = read_json(folder / "uninterrupted" / "train.json")["execution"]
    assert ran["applied"] == ["compile", "bf16", "channels_last"] and ran["optimizer"] == "fused"
    assert graphs == 2  # train and eval mode: the last, smaller validation batch was padded, not recompiled
    check_trained_and_evaluated(config, prepared, folder / "uninterrupted", "bf16")


@pytest.mark.slow  # compiled_runs: torch.compile
def test_a_run_stopped_and_resumed_under_compile_bf16_and_channels_last_ends_identical(compiled_runs):
    _, folder, uninterrupted, resumed, _ = compiled_runs
    expected, got = (
        load_tensors(folder / "uninterrupted" / "model.pt"),
        load_tensors(folder / "resumed" / "model.pt"),
    )
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    strip = lambda path: [row.split(",")[:7] for row in path.read_text().splitlines()]  # noqa: E731
    assert strip(folder / "resumed" / "history.csv") == strip(folder / "uninterrupted" / "history.csv")
    assert resumed["selected_val_loss"] == uninterrupted["selected_val_loss"]


@pytest.mark.slow  # torch.compile: tens of seconds of code generation on a CPU
def test_compile_alone_trains_and_evaluates_like_eager(study, prepared, tmp_path):
    config = switched(study, compile=True)
    summary = train_switched(config, prepared, tmp_path)
    assert summary["execution"]["applied"] == ["compile"]
    check_trained_and_evaluated(config, prepared, tmp_path, "fp32")


def test_a_failing_compilation_stops_the_run_in_one_sentence_instead_of_training_eagerly(
    study, prepared, tmp_path
):
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            print("a graph break")  # fullgraph=True refuses it
            return x

    forward = runtime_module.CompiledForward(Untraceable(), cuda_graphs=False)
    with pytest.raises(StudyError, match=r"^torch.compile failed \(\w+: .*\); set runtime.compile to false"):
        forward(torch.zeros(2))


SHARED_COMPILE = """
import sys, torch
from pathlib import Path
from torch._dynamo.utils import counters
from cifar_resnet.runtime import share_compiled_code
share_compiled_code(Path(sys.argv[1]))
double = torch.compile(lambda x: (x * 2).sin())
double(torch.ones(8))
print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
"""


@pytest.mark.slow  # torch.compile: tens of seconds of code generation on a CPU
def test_a_second_process_loads_the_code_the_first_compiled(tmp_path):
    def compile_in_a_new_process() -> list[str]:
        code = [sys.executable, "-c", SHARED_COMPILE, str(tmp_path / "cache")]
        return subprocess.run(code, capture_output=True, text=True, check=True).stdout.split()

    assert compile_in_a_new_process() == ["0", "1"]  # compiled, and stored in the shared folder
    assert compile_in_a_new_process() == ["1", "0"]  # loaded from it
    assert (tmp_path / "cache" / "fxgraph").is_dir()
