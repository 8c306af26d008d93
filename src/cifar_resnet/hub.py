"""What a user takes away: a finished run's selected model, or a released one (``cifar_resnet.release``,
``hubconf.py``), ready to classify images in one call."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urljoin
from urllib.request import urlopen

import torch

from cifar_resnet.checkpoint import load_trained_run
from cifar_resnet.config import lookup
from cifar_resnet.errors import StudyError
from cifar_resnet.export import DeployedModel
from cifar_resnet.files import check_json, sha256
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.tensors import load_checkpoint

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
    check_finished(run_dir)
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


# What a run's folder holds once its training job has finished: what loading or releasing it reads.
FINISHED_RUN = ("model.pt", "train.json", "eval.json")


def check_finished(run_dir: Path) -> None:
    missing = [name for name in FINISHED_RUN if not (run_dir / name).is_file()]
    if missing:
        what = "is not a folder" if not run_dir.is_dir() else f"has no {' and no '.join(missing)}"
        raise StudyError(
            f"{run_dir} {what}: name the folders of finished runs, such as "
            "results/cifar10/runs/paper/resnet20/seed0 (cifar-resnet status lists them)."
        )


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
    network = build_model(ModelSpec(**checkpoint["spec"]))
    network.load_state_dict(checkpoint["state_dict"])
    normalization = checkpoint["normalization"]
    model = DeployedModel(network, torch.tensor(normalization["mean"]), torch.tensor(normalization["std"]))
    model.class_names = list(checkpoint["class_names"])
    model.provenance = dict(provenance)
    return model.eval()


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
