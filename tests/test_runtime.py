"""The runtime switches: torch.compile's mode and the step marks that CUDA graph replay needs."""

import pytest
import torch

from cifar_resnet import runtime as runtime_module
from cifar_resnet.evaluate import Split, evaluate_split
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.optimizer import make_optimizer
from cifar_resnet.train import train_step


@pytest.mark.parametrize(
    ("device", "compile", "cuda_graphs", "graphed"),
    [("cuda", True, True, True), ("cuda", True, False, False), ("cpu", True, True, False)],
)
def test_cuda_graphs_compile_reduce_overhead_and_mark_every_step(
    monkeypatch, device, compile, cuda_graphs, graphed
):
    runtime = {"compile": compile, "cuda_graphs": cuda_graphs}
    compile_modes, step_marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode: compile_modes.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: step_marks.append(1))
    runtime_module.compile_model(torch.nn.Identity(), runtime)
    runtime_module.mark_cuda_graph_step(torch.device(device), runtime)
    assert compile_modes == ["reduce-overhead" if cuda_graphs else "default"]
    assert step_marks == ([1] if graphed else [])


def test_with_cuda_graphs_every_training_step_and_evaluation_batch_is_marked(monkeypatch):
    marks = []
    monkeypatch.setattr(runtime_module, "applies", lambda switch, device, runtime: runtime[switch])  # CUDA
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    runtime = {"compile": True, "cuda_graphs": True, "bf16": False, "channels_last": False}
    cpu = torch.device("cpu")
    model = build_model(ModelSpec(8))
    optimizer = make_optimizer(model.parameters(), {"name": "adam", "lr": 0.01, "weight_decay": 0}, cpu)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6) % 10
    mean, std = torch.full((3,), 120.0), torch.full((3,), 60.0)
    for _ in range(2):
        train_step(model, optimizer, images, labels, mean, std, cpu, runtime)
    assert len(marks) == 2
    evaluate_split(model, Split(images, labels), mean, std, 4, cpu, runtime)
    assert len(marks) == 4  # two evaluation batches of at most 4
