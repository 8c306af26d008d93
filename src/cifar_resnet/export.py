"""Deployment, first stage: a run's selected model to ONNX, the input normalisation folded into the
graph, checked against PyTorch on the whole test split; then, where configured, its INT8 version.

The deployed model takes what a camera or an image file gives: uint8 RGB images [batch, 3, 32, 32]
with values 0 to 255 (batch of any size), and returns the logits.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_resnet import datasets
from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output, check_json, load_checkpoint, write_json
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.timings import process_age, work_timings

log = logging.getLogger(__name__)

# The first opset of the dynamo exporter's full operator coverage, and what onnxruntime runs everywhere.
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
INPUT_FORMAT = "uint8 RGB images [batch, 3, 32, 32], values 0-255; the normalisation is in the graph"
# The exporter's and the quantiser's passes log each rewrite at INFO; the job's log keeps its own lines.
TOOL_LOGGERS = ("onnx_ir", "onnxscript", "onnxruntime")
# Batches of the agreement check (always on the CPU) that fit its caches: against batches of 500, 1.5x
# PyTorch's and 1.2x onnxruntime's images/s (ResNet-20 on one thread of a 2-core Xeon).
CHECK_BATCH = 128


class DeployedModel(nn.Module):
    """The trained network behind its own input normalisation, (x / 255 - mean) / std as one
    multiply-add, so that no caller can normalise with the wrong statistics."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("scale", (1 / (255 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))

    def forward(self, images):
        return self.model(images.float() * self.scale + self.shift)


def deployed_model(train_summary: Path, model_path: Path, data: dict) -> DeployedModel:
    """The run's selected model (model.pt) with the training split's normalisation, on the CPU."""
    run_config = check_json(train_summary, ("config",))["config"]
    model = build_model(ModelSpec.for_run(run_config, data["num_classes"]))
    model.load_state_dict(load_checkpoint(model_path))
    return DeployedModel(model, data["mean"], data["std"]).eval()


def export_onnx(model: DeployedModel, path: Path) -> None:
    """``torch.onnx.export`` with the dynamo exporter, the batch dimension dynamic."""
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    with atomic_output(path) as temporary:
        program.save(temporary)


def onnx_session(path: Path, threads: int):
    """An onnxruntime CPU session on ``threads`` intra-op threads; a file onnxruntime cannot load is
    reported in one sentence."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    if not Path(path).is_file():
        raise StudyError(f"{path} is missing; run that run's export first.")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a broken model
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StudyError(f"{path} is not a model onnxruntime can load ({reason}); export it again.") from None


def onnx_logits(session, images: np.ndarray, batch_size: int = CHECK_BATCH) -> np.ndarray:
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + batch_size]})[0]
            for start in range(0, len(images), batch_size)
        ]
    )


@torch.inference_mode()
def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = CHECK_BATCH) -> np.ndarray:
    return torch.cat(
        [model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    ).numpy()


def agreement(reference: np.ndarray, logits: np.ndarray) -> dict:
    """How far ``logits`` are from ``reference``: the share of equal top-1 classes, the largest absolute
    difference of any logit, and that difference relative to the largest reference logit (float32
    rounding grows with the logits' scale, so the tolerance is on the relative one)."""
    difference = float(np.abs(reference - logits).max())
    return {
        "top1_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
        "max_logit_difference": difference,
        "relative_logit_difference": difference / max(float(np.abs(reference).max()), 1e-12),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def check_agreement(measured: dict, tolerance: dict, path: Path) -> None:
    """The export is checked, not trusted: beyond the tolerance it fails, in one sentence."""
    if (
        measured["relative_logit_difference"] > tolerance["max_relative_logit_difference"]
        or measured["top1_agreement"] < tolerance["min_top1_agreement"]
    ):
        raise StudyError(
            f"{path} disagrees with its PyTorch model on the test split: top-1 agreement "
            f"{measured['top1_agreement']:.4f} (at least {tolerance['min_top1_agreement']} required), "
            f"largest logit difference {measured['max_logit_difference']:.3g}, "
            f"{measured['relative_logit_difference']:.3g} of the largest logit (at most "
            f"{tolerance['max_relative_logit_difference']} allowed); the exporter mis-translated an operator."
        )


def export_run(
    train_summary: Path,
    model_path: Path,
    prepared: Path,
    onnx_path: Path,
    int8_path: Path | None,
    report_path: Path,
    deploy: dict,
) -> dict:
    """Export a run's model, check it on the test split, quantise it when ``int8_path`` is given, and
    write what was measured to ``report_path``."""
    started, startup = time.perf_counter(), process_age()
    for name in TOOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    data = datasets.load_prepared(prepared, splits=("train", "test") if int8_path else ("test",))
    model = deployed_model(train_summary, model_path, data)
    test_images, test_labels = data["test_images"], data["test_labels"].numpy()
    exporting = time.perf_counter()
    reference = torch_logits(model, test_images)
    export_onnx(model, onnx_path)
    session = onnx_session(onnx_path, threads=torch.get_num_threads())
    logits = onnx_logits(session, test_images.numpy())
    measured = agreement(reference, logits)
    check_agreement(measured, deploy["tolerance"], onnx_path)
    report = {
        "input": INPUT_FORMAT,
        "opset": OPSET,
        "onnx_top1_agreement": measured["top1_agreement"],
        "onnx_max_logit_difference": measured["max_logit_difference"],
        "onnx_relative_logit_difference": measured["relative_logit_difference"],
        "onnx_test_error": 100 * (1 - accuracy(logits, test_labels)),
        "num_test_images": len(test_labels),
    }
    log.info(
        "ONNX (opset %d) agrees with PyTorch on %.2f%% of %d test images, largest logit difference %.2g",
        OPSET,
        100 * measured["top1_agreement"],
        len(test_labels),
        measured["max_logit_difference"],
    )
    if int8_path:
        from cifar_resnet.quantize import quantize_and_measure  # which builds on this module

        report |= quantize_and_measure(onnx_path, int8_path, data, logits, deploy["calibration_images"])
        report["int8_error_difference"] = report["int8_test_error"] - report["onnx_test_error"]
        log.info(
            "INT8 test error %.2f%% (float %.2f%%), calibrated on %d training images",
            report["int8_test_error"],
            report["onnx_test_error"],
            deploy["calibration_images"],
        )
    ended = time.perf_counter()
    report["timings"] = work_timings(
        "export", startup, exporting - started, ended - exporting, ended - started
    )
    write_json(report_path, report)
    return report
