"""What a user takes away: a finished run's selected model, or a released one (``cifar_resnet.release``,
``hubconf.py``), ready to classify images in one call."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urljoin
from urllib.request import urlopen

import torch

from cifar_resnet.checkpoint import load_trained_run
from cifar_resnet.errors import StudyError
from cifar_resnet.export import DeployedModel
from cifar_resnet.files import check_json
from cifar_resnet.models import ModelSpec, build_model

# What load_run reads from the run's train.json and eval.json.
TRAIN_FIELDS = ("dataset", "variant", "depth", "seed", "config_hash", "git_commit", "versions")
INPUT_FIELDS = ("normalization", "class_names")
EVAL_FIELDS = ("test_error", "test_accuracy")


def load_run(run_dir: str | Path) -> DeployedModel:
    """The selected model of a finished run (``results/{dataset}/runs/{variant}/resnet{depth}/seed{seed}``)
    on the CPU in eval mode. It takes uint8 RGB images, ``[batch, 3, 32, 32]`` with values 0 to 255, as
    the run's ONNX model does, and returns logits: the training split's normalisation is inside.

    ``model.class_names`` names the logits' classes; ``model.provenance`` holds the run (dataset, variant,
    depth, seed), its configuration hash, git commit and library versions, and its test error."""
    run_dir = Path(run_dir)
    summary = read_train_summary(run_dir / "train.json")
    class_names = summary["class_names"]
    _, network = load_trained_run(run_dir / "train.json", run_dir / "model.pt", len(class_names))
    normalization = summary["normalization"]
    model = DeployedModel(network, torch.tensor(normalization["mean"]), torch.tensor(normalization["std"]))
    model.class_names = list(class_names)
    evaluation = check_json(run_dir / "eval.json", EVAL_FIELDS)
    model.provenance = {field: summary[field] for field in TRAIN_FIELDS} | {
        field: evaluation[field] for field in EVAL_FIELDS
    }
    return model.eval()


def read_train_summary(path: Path, fields: tuple[str, ...] = ()) -> dict:
    """A run's train.json, which must hold the configuration, the provenance, what the model's input and
    output mean (written by the training since the normalisation and class names were added) and
    ``fields``."""
    summary = check_json(path, ("config", *TRAIN_FIELDS, *fields))
    missing = [field for field in INPUT_FIELDS if field not in summary]
    if missing:
        raise StudyError(
            f"{path} lacks {', '.join(missing)}: it was written by an older version of the training; delete"
            " it and run the workflow again to retrain that run."
        )
    return summary


def model_name(dataset: str, variant: str, depth: int, seed: int) -> str:
    """A run's name in a release: ``{dataset}-{variant}-resnet{depth}-seed{seed}``."""
    return f"{dataset}-{variant}-resnet{depth}-seed{seed}"


def load_released(manifest_url: str, dataset: str, variant: str, depth: int, seed: int) -> DeployedModel:
    """A released model (``cifar_resnet.release``) from the release whose ``manifest.json`` is at
    ``manifest_url``: its weights file is downloaded once into torch.hub's cache and verified against the
    sha256 its name carries. The same model as ``load_run`` gives for the run."""
    manifest = _read_manifest(manifest_url)
    name = model_name(dataset, variant, depth, seed)
    entry = manifest.get("models", {}).get(name)
    if entry is None:
        released = ", ".join(sorted(manifest.get("models", {}))) or "none"
        raise StudyError(f"The release at {manifest_url} has no model {name}; it has: {released}.")
    weights = entry["files"]["weights"]
    try:
        checkpoint = torch.hub.load_state_dict_from_url(
            urljoin(manifest_url, weights), map_location="cpu", check_hash=True, weights_only=True
        )
    except RuntimeError as error:
        if "invalid hash value" not in str(error):
            raise
        raise StudyError(
            f"{weights} from {manifest_url} does not match the sha256 in its name: the download is damaged or"
            f" was altered; it was not loaded and is removed from torch.hub's cache."
        ) from None
    network = build_model(ModelSpec(**checkpoint["spec"]))
    network.load_state_dict(checkpoint["state_dict"])
    normalization = checkpoint["normalization"]
    model = DeployedModel(network, torch.tensor(normalization["mean"]), torch.tensor(normalization["std"]))
    model.class_names = list(checkpoint["class_names"])
    model.provenance = dict(checkpoint["provenance"])
    return model.eval()


def _read_manifest(url: str) -> dict:
    try:
        with urlopen(url, timeout=60) as response:  # noqa: S310 (the user names the release)
            return json.loads(response.read())
    except (OSError, ValueError) as error:
        raise StudyError(f"Cannot read the release manifest {url} ({error}).") from None
