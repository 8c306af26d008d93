"""Evaluation: a model's loss, accuracy and predictions over a whole split (the trainer's validation
uses it each epoch), and the final, single use of the test set on a trained run's selected model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cifar_resnet import datasets
from cifar_resnet.augment import normalize
from cifar_resnet.datasets import Split
from cifar_resnet.models import count_parameters
from cifar_resnet.records import EVAL_RECORD_FIELDS, write_record
from cifar_resnet.runtime import Runtime
from cifar_resnet.timings import work_timings
from cifar_resnet.trained import load_network

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor


@torch.no_grad()
def evaluate_split(model, split: Split, mean, std, runtime: Runtime) -> Evaluation:
    """Loss, accuracy and predictions over a whole split, in batches of the runtime's evaluation batch
    size, one host sync at the end. Under compile the last batch is padded to the others' size and the
    padding's logits dropped (in eval mode each image's logits depend on that image alone): static
    shapes would compile again for it, and CUDA graphs record again (docs/benchmark.md)."""
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device)
    predictions = torch.empty_like(split.labels)
    batch_size = min(runtime.eval_batch_size, len(split.labels))
    for start in range(0, len(split.labels), batch_size):
        images = normalize(split.images[start : start + batch_size], mean, std)
        labels = split.labels[start : start + batch_size]
        if runtime.compile and len(labels) < batch_size:
            images = F.pad(images, (0, 0, 0, 0, 0, 0, 0, batch_size - len(labels)))
        runtime.mark_step()
        with runtime.autocast():
            logits = model(images.contiguous(memory_format=runtime.memory_format))[: len(labels)]
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        predictions[start : start + batch_size] = logits.argmax(1)
    correct = (predictions == split.labels).sum()
    count = len(split.labels)
    return Evaluation(loss=loss_sum.item() / count, accuracy=correct.item() / count, predictions=predictions)


def macs_per_image(model: torch.nn.Module) -> int:
    """Multiply-accumulates of one forward pass, counted where they happen: convolutions and linear
    layers (what torch's flop counter counts, without the second it takes to import it)."""
    counted = []

    def count(layer, inputs, output):
        if isinstance(layer, torch.nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            per_output = layer.in_features
        counted.append(output.numel() * per_output)

    hooks = [
        layer.register_forward_hook(count)
        for layer in model.modules()
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.to("cpu").eval()(torch.zeros(1, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)


def evaluate_run(
    train_summary: Path, model_path: Path, prepared: Path, output: Path, runtime: Runtime
) -> dict:
    """Evaluate a trained run's selected model on the test split with the training job's ``runtime`` and
    write ``eval.json``: the test results, the confusion matrix, the model's size and the inference
    speed. Part of the training job, after the model was selected and saved."""
    started = time.perf_counter()
    data = datasets.load_prepared(prepared, splits=("test",))
    model = load_network(train_summary, model_path)
    params = count_parameters(model, trainable_only=False)
    macs = macs_per_image(model)

    device = runtime.device
    model = runtime.to_device(model)
    test = Split(data["test_images"].to(device), data["test_labels"].to(device))
    mean, std = data["mean"].to(device), data["std"].to(device)
    if device.type == "cuda":  # one batch first: CUDA's lazy start and cuDNN's autotuning stay untimed
        size = runtime.eval_batch_size
        evaluate_split(model, Split(test.images[:size], test.labels[:size]), mean, std, runtime)
    inference_started = time.perf_counter()
    result = evaluate_split(model, test, mean, std, runtime)
    seconds = time.perf_counter() - inference_started

    classes = data["num_classes"]
    labels, predictions = test.labels.cpu(), result.predictions.cpu()
    confusion = torch.bincount(labels * classes + predictions, minlength=classes * classes).view(
        classes, classes
    )
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    metrics = {
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "test_error": 100 * (1 - result.accuracy),
        "params": params,
        "macs": macs,
        "per_class_accuracy": per_class.tolist(),
        "confusion_matrix": confusion.tolist(),
        "class_names": data["class_names"],
        "num_test_images": len(labels),
        "inference_images_per_s": len(labels) / seconds,
        "device": str(device),
    }
    metrics["timings"] = work_timings(
        "evaluation", None, inference_started - started, seconds, time.perf_counter() - started
    )
    write_record(output, metrics, EVAL_RECORD_FIELDS)
    log.info(
        "test accuracy %.2f%% (error %.2f%%), loss %.4f, %d params, %.1fM MACs, %.0f img/s inference",
        100 * result.accuracy,
        metrics["test_error"],
        result.loss,
        params,
        macs / 1e6,
        metrics["inference_images_per_s"],
    )
    return metrics
