"""The optimizer: torch.optim's updates, bit for bit, and a state that resumes bit-identically (that it
imports no torch._dynamo is test_train's test of a whole training job)."""

import pytest
import torch

from cifar_resnet.errors import StudyError
from cifar_resnet.files import load_tensors, save_tensors
from cifar_resnet.optimizer import Optimizer

SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
ADAM = {"name": "adam", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
NADAM = {**ADAM, "name": "nadam"}
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "nadam": torch.optim.NAdam}
CASES = [
    (SGD, {"foreach": True}),
    (SGD, {"fused": True}),
    ({**SGD, "nesterov": True}, {"foreach": True}),
    ({**SGD, "momentum": 0.0}, {"foreach": True}),
    (ADAM, {"foreach": True}),
    (ADAM, {"fused": True}),
    (NADAM, {"foreach": True}),
]
IDS = ["sgd", "sgd-fused", "sgd-nesterov", "sgd-no-momentum", "adam", "adam-fused", "nadam"]
LRS = [1.0, 1.0, 0.5, 0.1, 0.1, 0.01]  # a schedule's changes between steps, as factors of the base lr


def torch_optimizer(parameters, settings: dict, implementation: dict) -> torch.optim.Optimizer:
    hyper = {"lr": settings["lr"], "weight_decay": settings["weight_decay"], **implementation}
    if settings["name"] == "sgd":
        hyper |= {"momentum": settings["momentum"], "nesterov": settings["nesterov"]}
    return TORCH[settings["name"]](parameters, **hyper)


def parameters() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (16,), (10, 16)]
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def steps(optimizer, params: list[torch.Tensor], lrs: list[float], base_lr: float, first: int = 0) -> None:
    """Steps with the same gradients for any optimizer; step ``first + k`` draws from seed ``first + k``,
    and the second parameter gets no gradient on odd steps (a head that a step leaves alone)."""
    for k, factor in enumerate(lrs, start=first):
        generator = torch.Generator().manual_seed(100 + k)
        for index, parameter in enumerate(params):
            skipped = index == 1 and k % 2
            parameter.grad = None if skipped else torch.randn(parameter.shape, generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = base_lr * factor
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(("settings", "implementation"), CASES, ids=IDS)
def test_the_updates_are_torch_optims_bit_for_bit(settings, implementation):
    ours, theirs = parameters(), parameters()
    steps(Optimizer(ours, settings, implementation), ours, LRS, settings["lr"])
    steps(torch_optimizer(theirs, settings, implementation), theirs, LRS, settings["lr"])
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.equal(mine, reference)
    assert not torch.equal(ours[0], parameters()[0])  # the steps did move the parameters


@pytest.mark.parametrize(("settings", "implementation"), CASES, ids=IDS)
def test_a_saved_and_restored_state_continues_bit_identically(settings, implementation, tmp_path):
    uninterrupted = parameters()
    steps(Optimizer(uninterrupted, settings, implementation), uninterrupted, LRS, settings["lr"])
    resumed = parameters()
    before = Optimizer(resumed, settings, implementation)
    steps(before, resumed, LRS[:3], settings["lr"])
    save_tensors(tmp_path / "resume.pt", {"optimizer": before.state_dict()})
    after = Optimizer(resumed, settings, implementation)
    after.load_state_dict(load_tensors(tmp_path / "resume.pt")["optimizer"])
    steps(after, resumed, LRS[3:], settings["lr"], first=3)
    for mine, reference in zip(resumed, uninterrupted, strict=True):
        assert torch.equal(mine, reference)


def test_another_optimizers_state_is_refused_in_one_sentence():
    params = parameters()
    nadam = Optimizer(params, NADAM, {"foreach": True})
    steps(nadam, params, LRS[:1], NADAM["lr"])
    with pytest.raises(StudyError, match="not that of this run's sgd optimizer over 3 parameters"):
        Optimizer(params, SGD, {"foreach": True}).load_state_dict(nadam.state_dict())
    foreign = torch.optim.SGD(params, lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(StudyError, match="not that of this run's sgd optimizer"):
        Optimizer(params, SGD, {"foreach": True}).load_state_dict(foreign)
