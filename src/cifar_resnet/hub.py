"""What a user takes away: a finished run's selected model, or a released one (``cifar_resnet.release``,
``hubconf.py``), ready to classify images in one call."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urljoin
from urllib.request import urlopen

import torch

from cifar_resnet.config import lookup
from cifar_resnet.errors import StudyError
from cifar_resnet.export import DeployedModel
from cifar_resnet.files import sha256
from cifar_resnet.layout import MODEL, TRAIN_RECORD
from cifar_resnet.tensors import load_checkpoint
from cifar_resnet.trained import deployed_model, run_checkpoint


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
