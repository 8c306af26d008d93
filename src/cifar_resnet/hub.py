"""What a user takes away: a finished run's selected model, ready to classify images in one call."""

from __future__ import annotations

from pathlib import Path

import torch

from cifar_resnet.checkpoint import load_trained_run
from cifar_resnet.errors import StudyError
from cifar_resnet.export import DeployedModel
from cifar_resnet.files import check_json

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
    summary = check_json(run_dir / "train.json", ("config", *TRAIN_FIELDS))
    missing = [field for field in INPUT_FIELDS if field not in summary]
    if missing:
        raise StudyError(
            f"{run_dir / 'train.json'} lacks {', '.join(missing)}: it was written by an older version of the"
            " training; delete it and run the workflow again to retrain that run."
        )
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
