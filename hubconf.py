"""torch.hub entry points: the study's released models (``cifar-resnet release``), one entry per depth.

    model = torch.hub.load("OWNER/REPO", "resnet20", variant="paper", seed=0, release=URL)
    logits = model(images)  # uint8 RGB [batch, 3, 32, 32], values 0 to 255; model.class_names

``release`` is the URL of a release folder's ``manifest.json`` (a GitHub release's assets, or any web
server); without it, the environment variable CIFAR_RESNET_RELEASE. The weights are downloaded once into
torch.hub's cache; every load verifies them against the full sha256 the manifest records, and their
provenance against the run asked for.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from cifar_resnet.errors import StudyError  # noqa: E402
from cifar_resnet.hub import load_released  # noqa: E402

dependencies = ["torch", "numpy"]


def _released(depth: int, variant: str, seed: int, dataset: str, release: str | None):
    release = release or os.environ.get("CIFAR_RESNET_RELEASE")
    if not release:
        raise StudyError(
            "Name the release: release=<URL of its manifest.json>, or set CIFAR_RESNET_RELEASE to that URL."
        )
    return load_released(release, dataset, variant, depth, seed)


def _entry(depth: int, parameters: str):
    def entry(variant: str = "paper", seed: int = 0, dataset: str = "cifar10", release: str | None = None):
        return _released(depth, variant, seed, dataset, release)

    entry.__name__ = entry.__qualname__ = f"resnet{depth}"
    entry.__doc__ = (
        f"ResNet-{depth} ({parameters} parameters) trained in ``variant`` with ``seed`` on ``dataset``,"
        " loaded from ``release``: ready to classify uint8 images, with ``class_names`` and ``provenance``."
    )
    return entry


resnet20 = _entry(20, "0.27M")
resnet32 = _entry(32, "0.46M")
resnet44 = _entry(44, "0.66M")
resnet56 = _entry(56, "0.85M")
resnet110 = _entry(110, "1.7M")
