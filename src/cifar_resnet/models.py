"""The CIFAR ResNet family of He et al. (2016), every variant an option of one builder.

Depth is 6n+2: a 3x3 stem convolution, three stages of n residual blocks with 16/32/64 filters
(times ``width``), the second and third starting with a stride-2 block, global average pooling and
a classification head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B")
HEADS = ("linear", "dropout", "dense_dropout")
STAGE_FILTERS = (16, 32, 64)


@dataclass(frozen=True)
class ModelSpec:
    depth: int
    num_classes: int = 10
    shortcut: str = "A"
    preact: bool = False
    width: int = 1
    head: str = "linear"
    dropout: float = 0.5
    head_hidden: int = 128

    def __post_init__(self):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"depth {self.depth} is not of the form 6n+2 (20, 32, 44, 56, 110, 1202, ...)")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut {self.shortcut!r} is not one of {SHORTCUTS}")
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not one of {HEADS}")
        if self.width < 1:
            raise ValueError(f"width multiplier must be at least 1, got {self.width}")

    @classmethod
    def for_run(cls, run_config: dict, num_classes: int) -> ModelSpec:
        """The model of a run (``Study.run_config``): its depth and its recipe's model options."""
        return cls(depth=run_config["depth"], num_classes=num_classes, **run_config["recipe"]["model"])

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class GlobalAveragePool(nn.Module):
    """The mean over height and width: nn.AdaptiveAvgPool2d(1) and Flatten in one, but with a
    deterministic CUDA backward (AdaptiveAvgPool2d's raises under torch.use_deterministic_algorithms)."""

    def forward(self, x):
        return x.mean((2, 3))


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by the stride and pad the new channels with zeros (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; post-activation (conv-BN-ReLU, the 2016 paper) or pre-activation
    (BN-ReLU-conv, "Identity Mappings in Deep Residual Networks")."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str, preact: bool):
        super().__init__()
        self.preact = preact
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(in_channels if preact else out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride)

    def forward(self, x):
        if self.preact:
            out = self.conv1(F.relu(self.bn1(x)))
            out = self.conv2(F.relu(self.bn2(out)))
            return out + self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_head(spec: ModelSpec, features: int) -> nn.Sequential:
    if spec.head == "linear":
        return nn.Sequential(nn.Linear(features, spec.num_classes))
    if spec.head == "dropout":
        return nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(features, spec.num_classes))
    return nn.Sequential(
        nn.Linear(features, spec.head_hidden),
        nn.BatchNorm1d(spec.head_hidden),
        nn.ReLU(),
        nn.Dropout(spec.dropout),
        nn.Linear(spec.head_hidden, spec.num_classes),
    )


class CifarResNet(nn.Module):
    """``backbone`` maps images to pooled features, ``head`` maps features to logits; fine-tuning
    replaces or freezes them separately."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        filters = [f * spec.width for f in STAGE_FILTERS]
        stem = [conv3x3(3, filters[0])]
        if not spec.preact:  # pre-activation blocks normalise their own input
            stem += [nn.BatchNorm2d(filters[0]), nn.ReLU()]
        layers = list(stem)
        in_channels = filters[0]
        for stage, out_channels in enumerate(filters):
            for block in range(spec.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, out_channels, stride, spec.shortcut, spec.preact))
                in_channels = out_channels
        if spec.preact:
            layers += [nn.BatchNorm2d(in_channels), nn.ReLU()]
        layers.append(GlobalAveragePool())
        self.backbone = nn.Sequential(*layers)
        self.head = make_head(spec, in_channels)
        self.apply(init_weights)

    def forward(self, x):
        return self.head(self.backbone(x))


def init_weights(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation for convolutions and linear layers, as in the paper."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(spec: ModelSpec) -> CifarResNet:
    return CifarResNet(spec)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
