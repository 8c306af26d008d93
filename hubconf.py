"""torch.hub entry points: the CIFAR ResNets of this study, one entry per depth (``resnet20`` ...
``resnet110``, the dataset an argument) and one per dataset and depth (``cifar10_resnet20`` ...
``cifar100_resnet110``). Each builds any variant of the study's configuration untrained, or loads a
released run's trained model. From a clone's folder:

    model = torch.hub.load(".", "cifar10_resnet20", source="local", variant="wide")  # untrained, to train
    model = torch.hub.load(".", "cifar10_resnet20", source="local", pretrained=True, release=manifest_url)
    logits = model(images)  # released: uint8 RGB [batch, 3, 32, 32], values 0 to 255; model.class_names

From GitHub, the repository's owner/name (optionally :tag) takes the place of "." and ``source`` is left
out. ``release`` is the URL of a release folder's ``manifest.json`` (``cifar-resnet release``); without
it, the environment variable CIFAR_RESNET_RELEASE. ``torch.hub.help`` shows each entry's arguments. The
logic lives in ``cifar_resnet.hub``.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_ROOT, "src"))

from cifar_resnet import hub as _hub  # noqa: E402

dependencies = ["torch", "numpy", "yaml", "jsonschema"]

# The variants' architectures: this clone's configuration, wherever torch.hub is called from.
_CONFIG = os.path.join(_ROOT, "config", "config.yaml")

resnet20 = _hub.hub_entry(_CONFIG, 20)
resnet32 = _hub.hub_entry(_CONFIG, 32)
resnet44 = _hub.hub_entry(_CONFIG, 44)
resnet56 = _hub.hub_entry(_CONFIG, 56)
resnet110 = _hub.hub_entry(_CONFIG, 110)
cifar10_resnet20 = _hub.hub_entry(_CONFIG, 20, "cifar10")
cifar10_resnet32 = _hub.hub_entry(_CONFIG, 32, "cifar10")
cifar10_resnet44 = _hub.hub_entry(_CONFIG, 44, "cifar10")
cifar10_resnet56 = _hub.hub_entry(_CONFIG, 56, "cifar10")
cifar10_resnet110 = _hub.hub_entry(_CONFIG, 110, "cifar10")
cifar100_resnet20 = _hub.hub_entry(_CONFIG, 20, "cifar100")
cifar100_resnet32 = _hub.hub_entry(_CONFIG, 32, "cifar100")
cifar100_resnet44 = _hub.hub_entry(_CONFIG, 44, "cifar100")
cifar100_resnet56 = _hub.hub_entry(_CONFIG, 56, "cifar100")
cifar100_resnet110 = _hub.hub_entry(_CONFIG, 110, "cifar100")
