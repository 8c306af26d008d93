"""A finished run's model, built one way whether it comes from the run's folder or from a release: a
checkpoint dict (the weights, the architecture as a ``ModelSpec``'s fields, the input's normalisation, the
class names and the provenance) that a release stores as it is, from which the network and the model a
user calls are built."""

from __future__ import annotations

from pathlib import Path

import torch

from cifar_resnet.errors import StudyError
from cifar_resnet.export import DeployedModel
from cifar_resnet.layout import EVAL_RECORD, FINISHED, MODEL, TRAIN_RECORD
from cifar_resnet.models import CifarResNet, ModelSpec, build_model
from cifar_resnet.records import PROVENANCE, read_eval_record, read_train_record
from cifar_resnet.tensors import load_checkpoint

# The test results a model's provenance carries beside the run's.
TESTED = ("test_error", "test_accuracy")


def check_finished(run_dir: Path) -> None:
    """That ``run_dir`` holds what a finished run's training job writes; one sentence otherwise."""
    missing = [name for name in FINISHED if not (run_dir / name).is_file()]
    if missing:
        what = "is not a folder" if not run_dir.is_dir() else f"has no {' and no '.join(missing)}"
        raise StudyError(
            f"{run_dir} {what}: name the folders of finished runs, such as "
            "results/cifar10/runs/paper/resnet20/seed0 (cifar-resnet status lists them)."
        )


def run_checkpoint(run_dir: Path) -> dict:
    """The checkpoint of the finished run in ``run_dir`` (``checkpoint_of`` its files)."""
    run_dir = Path(run_dir)
    check_finished(run_dir)
    record, evaluation = read_train_record(run_dir / TRAIN_RECORD), read_eval_record(run_dir / EVAL_RECORD)
    return checkpoint_of(record, load_checkpoint(run_dir / MODEL), evaluation)


def trained_checkpoint(train_record: Path, model: Path) -> dict:
    """The checkpoint of a trained run from its ``train_record`` and ``model`` alone, before (or without)
    its evaluation."""
    return checkpoint_of(read_train_record(train_record), load_checkpoint(model))


def checkpoint_of(record: dict, state_dict: dict, evaluation: dict | None = None) -> dict:
    """A run's selected model's weights (``state_dict``) with the architecture, normalisation, class names
    and provenance (the run, configuration hash, git commit, library versions) its train.json ``record``
    holds, and its test results where its eval.json ``evaluation`` is given."""
    tested = {field: evaluation[field] for field in TESTED} if evaluation else {}
    return {
        "state_dict": state_dict,
        "spec": record["model"],
        "normalization": record["normalization"],
        "class_names": record["class_names"],
        "provenance": {field: record[field] for field in PROVENANCE} | tested,
    }


def load_network(train_record: Path, model: Path) -> CifarResNet:
    """A trained run's selected network on the CPU in eval mode: what its evaluation uses."""
    return build_network(trained_checkpoint(train_record, model), str(model), Path(train_record).name)


def build_network(checkpoint: dict, weights: str, described_in: str) -> CifarResNet:
    """The network of ``checkpoint`` on the CPU in eval mode. Weights of another architecture than the
    one its spec describes are one sentence naming where the ``weights`` and the spec (``described_in``)
    come from."""
    spec = checkpoint["spec"]
    network = build_model(ModelSpec(**spec))
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # another architecture's weights: torch lists every mismatch
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise StudyError(
            f"{weights} does not hold the weights of the ResNet-{spec['depth']} "
            f"({checkpoint['provenance']['variant']}) its {described_in} describes ({first.rstrip('.')}); "
            "they come from different trainings: delete the run's files and run the workflow again to "
            "retrain it."
        ) from None
    return network.eval()


def deployed_model(checkpoint: dict, weights: str, described_in: str) -> DeployedModel:
    """The model a user calls, built from ``checkpoint`` (``run_checkpoint``'s or a release's; the other
    arguments as ``build_network`` takes them): the network behind its input normalisation, on the CPU
    in eval mode, with its ``class_names`` and ``provenance``."""
    network = build_network(checkpoint, weights, described_in)
    normalization = checkpoint["normalization"]
    model = DeployedModel(network, torch.tensor(normalization["mean"]), torch.tensor(normalization["std"]))
    model.class_names = list(checkpoint["class_names"])
    model.provenance = dict(checkpoint["provenance"])
    return model.eval()
