"""What a user takes away: a finished run's selected model, or a released one (``cifar_resnet.release``,
``hubconf.py``), ready to classify images in one call; and torch.hub's entries, which also build any
variant's untrained network from the study's configuration."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urljoin
from urllib.request import urlopen

import torch

from cifar_resnet.config import Run, load_study, lookup, read_config_file
from cifar_resnet.errors import StudyError
from cifar_resnet.export import DeployedModel
from cifar_resnet.files import sha256
from cifar_resnet.layout import MODEL, TRAIN_RECORD
from cifar_resnet.models import CifarResNet, ModelSpec, build_model
from cifar_resnet.sources import DATASET_TITLES, get_source
from cifar_resnet.tensors import load_checkpoint
from cifar_resnet.trained import deployed_model, run_checkpoint

# torch.hub's entries: one per depth (``resnet20``, the dataset an argument) and one per depth and dataset
# as users know them (``cifar10_resnet20``).
HUB_DEPTHS = (20, 32, 44, 56, 110)
HUB_DATASETS = ("cifar10", "cifar100")
# The paper's parameter counts on CIFAR-10 (Table 6), for the entries' docstrings.
PAPER_PARAMETERS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}
RELEASE_VARIABLE = "CIFAR_RESNET_RELEASE"


def load_run(run_dir: str | Path) -> DeployedModel:
    """The selected model of a finished run (``results/{dataset}/runs/{variant}/resnet{depth}/seed{seed}``)
    on the CPU in eval mode. It takes uint8 RGB images, ``[batch, 3, 32, 32]`` with values 0 to 255, as
    the run's ONNX model does, and returns logits: the training split's normalisation is inside.

    ``model.class_names`` names the logits' classes; ``model.provenance`` holds the run (dataset, variant,
    depth, seed), its configuration hash, git commit and library versions, and its test error."""
    run_dir = Path(run_dir)
    return deployed_model(run_checkpoint(run_dir), str(run_dir / MODEL), TRAIN_RECORD)


def model_name(dataset: str, variant: str, depth: int, seed: int) -> str:
    """A run's name in a release: ``{dataset}-{variant}-resnet{depth}-seed{seed}``."""
    return f"{dataset}-{variant}-resnet{depth}-seed{seed}"


def load_released(manifest_url: str, dataset: str, variant: str, depth: int, seed: int) -> DeployedModel:
    """A released model (``cifar_resnet.release``) from the release whose ``manifest.json`` is at
    ``manifest_url``: its weights file is downloaded once into torch.hub's cache, and every load (the
    first, and each from the cache) verifies it against the full sha256 the manifest records and its
    provenance against the run asked for. The same model as ``load_run`` gives for the run."""
    name = model_name(dataset, variant, depth, seed)
    entry = manifest_entry(_read_manifest(manifest_url), manifest_url, name)
    weights, expected = entry["files"]["weights"], entry["sha256"]["weights"]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights).name
    if not cached.exists():
        _download(urljoin(manifest_url, weights), cached)
    if sha256(cached) != expected:
        cached.unlink()
        raise StudyError(
            f"{weights} from {manifest_url} does not match the sha256 its manifest records: the download or"
            " the cached copy is damaged or was altered; it was not loaded and is removed from torch.hub's"
            " cache."
        )
    checkpoint = load_checkpoint(cached)
    provenance = checkpoint["provenance"]
    found = model_name(*(provenance.get(field) for field in ("dataset", "variant", "depth", "seed")))
    if found != name:
        raise StudyError(
            f"{weights} from {manifest_url} holds the model {found}, not {name} as its manifest says; the "
            "release is inconsistent, and it was not loaded."
        )
    return deployed_model(checkpoint, f"{weights} from {manifest_url}", "release entry")


def manifest_entry(manifest, manifest_url: str, name: str) -> dict:
    """The manifest's entry for the model ``name``, with the weights' file and full sha256; a manifest
    that is not a release's, or lacks either, is one sentence."""
    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, dict):
        raise StudyError(f"{manifest_url} is not a release manifest: it has no mapping of models.")
    entry = models.get(name)
    if entry is None:
        released = ", ".join(sorted(models)) or "none"
        raise StudyError(f"The release at {manifest_url} has no model {name}; it has: {released}.")
    weights, digest = lookup(entry, ("files", "weights")), lookup(entry, ("sha256", "weights"))
    if not isinstance(weights, str) or not (
        isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
    ):
        raise StudyError(
            f"The entry for {name} in {manifest_url} lacks its weights file or their full sha256, so they "
            "cannot be verified; it was not loaded."
        )
    return entry


def _download(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except (OSError, ValueError) as error:
        raise StudyError(f"Cannot download {url} ({error}).") from None


def _read_manifest(url: str) -> dict:
    try:
        with urlopen(url, timeout=60) as response:  # noqa: S310 (the user names the release)
            return json.loads(response.read())
    except (OSError, ValueError) as error:
        raise StudyError(f"Cannot read the release manifest {url} ({error}).") from None


def untrained_network(config_file: str | Path, dataset: str, variant: str, depth: int) -> CifarResNet:
    """The untrained network of ``variant`` at ``depth`` for ``dataset``'s classes, as the workflow
    builds it (``ModelSpec.for_run``) from the study's configuration ``config_file``."""
    num_classes = get_source(dataset).num_classes
    study = load_study(read_config_file(config_file))
    if variant not in study.recipes:
        raise StudyError(
            f"There is no variant {variant!r} in {config_file}; choose one of {', '.join(study.recipes)}."
        )
    return build_model(ModelSpec.for_run(study.run_config(Run(dataset, variant, depth, 0)), num_classes))


def hub_model(
    config_file: str | Path,
    depth: int,
    dataset: str,
    variant: str,
    seed: int,
    release: str | None,
    pretrained: bool | None,
) -> CifarResNet | DeployedModel:
    """What a torch.hub entry returns: the released model of the run (``load_released``) where
    ``pretrained`` is true, or is left out and a release is named (``release`` or the environment
    variable CIFAR_RESNET_RELEASE); the untrained network otherwise (``untrained_network``)."""
    get_source(dataset)  # an unknown dataset is one sentence, before anything is read
    if pretrained is False:
        if release:
            raise StudyError(
                "pretrained=False builds an untrained network, which needs no release: leave out release=, "
                "or pass pretrained=True to load the released model."
            )
        return untrained_network(config_file, dataset, variant, depth)
    release = release or os.environ.get(RELEASE_VARIABLE)
    if release:
        return load_released(release, dataset, variant, depth, seed)
    if pretrained:
        raise StudyError(
            f"pretrained=True loads a released model: name the release with release=<URL of its "
            f"manifest.json>, or set {RELEASE_VARIABLE} to that URL."
        )
    return untrained_network(config_file, dataset, variant, depth)


ENTRY_DOC = """He et al.'s ResNet-{depth} ({parameters} parameters in the paper's variant on CIFAR-10)
for {what}, in any variant of the study: untrained, or trained from a release.

    model = torch.hub.load(".", "{name}", source="local", variant="wide"{dataset_argument})  # untrained
    model = torch.hub.load(".", "{name}", source="local", variant="paper", seed=0{dataset_argument},
                           pretrained=True, release=manifest_url)

as called from a clone's folder; from GitHub, the repository's owner/name (optionally :tag) instead of
"." and no source. manifest_url is the URL of a release's manifest.json, as its model cards give it.

Untrained (``pretrained=False``, the default where no release is named): the plain network
(``cifar_resnet.models.CifarResNet``, He-initialised, in training mode), built as the study's workflow
builds the variant, to train yourself: it takes float images [batch, 3, 32, 32], normalised as you train
it, and returns logits over the dataset's classes ({classes}).

Pretrained (``pretrained=True``, or a release named): the released run of ``variant`` and ``seed``,
downloaded once into torch.hub's cache and verified against the sha256 its manifest records, on the CPU
in eval mode. It takes uint8 RGB images [batch, 3, 32, 32] with values 0 to 255 (the training split's
normalisation is inside) and has ``class_names`` and ``provenance``.

variant: a variant of the clone's config/config.yaml (paper, projection, preact, dropout, wide, ...).
seed: the released run's seed (pretrained only).{dataset_doc}
release: the URL of a release's manifest.json; without it, the environment variable CIFAR_RESNET_RELEASE.
pretrained: True for the released model, False for the untrained network.
"""


def hub_entry(config_file: str | Path, depth: int, dataset: str | None = None):
    """The torch.hub entry for ``depth``: ``resnet{depth}``, whose dataset is an argument, or
    ``{dataset}_resnet{depth}`` for one dataset; the variants' architectures come from ``config_file``."""
    if dataset is None:

        def entry(
            variant: str = "paper",
            seed: int = 0,
            dataset: str = "cifar10",
            release: str | None = None,
            pretrained: bool | None = None,
        ):
            return hub_model(config_file, depth, dataset, variant, seed, release, pretrained)

        name, what, classes = f"resnet{depth}", "a dataset", "10 for cifar10, 100 for cifar100"
    else:
        fixed = dataset

        def entry(
            variant: str = "paper", seed: int = 0, release: str | None = None, pretrained: bool | None = None
        ):
            return hub_model(config_file, depth, fixed, variant, seed, release, pretrained)

        name, what = f"{dataset}_resnet{depth}", DATASET_TITLES[dataset]
        classes = get_source(dataset).num_classes
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = ENTRY_DOC.format(
        depth=depth,
        parameters=PAPER_PARAMETERS[depth],
        what=what,
        name=name,
        classes=classes,
        dataset_argument=', dataset="cifar10"' if dataset is None else "",
        dataset_doc="\ndataset: cifar10 or cifar100 (its number of classes)." if dataset is None else "",
    )
    return entry
