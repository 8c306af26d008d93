"""The optimizer a recipe names, in the fastest implementation the device offers."""

from __future__ import annotations

import torch


def make_optimizer(parameters, settings: dict, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if settings["name"] == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings["lr"],
            momentum=settings["momentum"],
            nesterov=settings["nesterov"],
            weight_decay=settings["weight_decay"],
            **fused,
        )
    if settings["name"] == "nadam":
        return torch.optim.NAdam(
            parameters, lr=settings["lr"], weight_decay=settings["weight_decay"], foreach=True
        )
    return torch.optim.Adam(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"], **fused)
