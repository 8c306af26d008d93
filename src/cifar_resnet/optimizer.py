"""The optimizer a recipe names, in the implementation the runtime picks for the device."""

from __future__ import annotations

import torch

from cifar_resnet.runtime import optimizer_implementation


def make_optimizer(parameters, settings: dict, device: torch.device, runtime: dict) -> torch.optim.Optimizer:
    if settings["name"] == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings["lr"],
            momentum=settings["momentum"],
            nesterov=settings["nesterov"],
            weight_decay=settings["weight_decay"],
            **optimizer_implementation(device, runtime, fusable=True),
        )
    if settings["name"] == "nadam":  # NAdam has no fused implementation
        return torch.optim.NAdam(
            parameters,
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            **optimizer_implementation(device, runtime, fusable=False),
        )
    return torch.optim.Adam(
        parameters,
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        **optimizer_implementation(device, runtime, fusable=True),
    )
