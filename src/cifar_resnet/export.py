"""A run's selected model to ONNX, the input normalisation folded into the graph, and the helpers that
run an ONNX model and compare its logits: the export is checked against PyTorch on the whole test
split, not trusted.

The deployed model takes what a camera or an image file gives: uint8 RGB images [batch, 3, 32, 32]
with values 0 to 255 (batch of any size), and returns the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output

# The first opset of the dynamo exporter's full operator coverage, and what onnxruntime runs everywhere.
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
INPUT_FORMAT = "uint8 RGB images [batch, 3, 32, 32], values 0-255; the normalisation is in the graph"
# Batches of the agreement check (always on the CPU) that fit a CPU's caches (docs/benchmark.md).
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
        images = as_images(images)
        return self.model(images.float() * self.scale + self.shift)


def as_images(images) -> torch.Tensor:
    """The model's input contract: uint8 RGB images ``[batch, 3, 32, 32]``, values 0 to 255, as a tensor
    or a numpy array. Where the layout is unambiguous it is converted: one image ``[3, 32, 32]``, and
    channels last (``[32, 32, 3]`` or ``[batch, 32, 32, 3]``, what PIL and numpy give). Anything else, a
    float image scaled to [0, 1] (torchvision's ``ToTensor``) among them, is refused in one sentence:
    the model would return confident garbage."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise StudyError(
            f"The model takes uint8 images as a tensor or numpy array, not a {type(images).__name__}."
        )
    if images.dtype != torch.uint8:
        raise StudyError(
            f"The model takes uint8 images with values 0 to 255, not {images.dtype}: pass them before "
            "ToTensor or any scaling (a float image x in [0, 1] is (x * 255).round().to(torch.uint8))."
        )
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)  # channels last, as PIL and numpy hold images
    if images.dim() != 4 or images.shape[1] != 3:
        raise StudyError(
            f"The model takes RGB images [batch, 3, 32, 32] (or one [32, 32, 3] image), not a tensor of "
            f"shape {list(images.shape)}."
        )
    if tuple(images.shape[2:]) != (32, 32):
        height, width = images.shape[2:]
        raise StudyError(
            f"The model takes 32×32 images, not {height}×{width}: resize them to 32×32 first, the size it "
            "was trained on."
        )
    return images


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
    # The input contract, where tools that show a model's inputs (Netron, onnx.helper) print it.
    program.model.doc_string = f"CIFAR ResNet: logits of {INPUT_FORMAT}"
    program.model.graph.inputs[0].doc_string = INPUT_FORMAT
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


def export_checked(
    model: DeployedModel, onnx_path: Path, data: dict, tolerance: dict
) -> tuple[dict, np.ndarray]:
    """Export ``model`` to ``onnx_path`` and check it against PyTorch on ``data``'s test split; returns
    what was measured and the ONNX model's test logits."""
    test_images = data["test_images"]
    reference = torch_logits(model, test_images)
    export_onnx(model, onnx_path)
    logits = onnx_logits(onnx_session(onnx_path, threads=torch.get_num_threads()), test_images.numpy())
    measured = agreement(reference, logits)
    check_agreement(measured, tolerance, onnx_path)
    report = {
        "input": INPUT_FORMAT,
        "opset": OPSET,
        "onnx_top1_agreement": measured["top1_agreement"],
        "onnx_max_logit_difference": measured["max_logit_difference"],
        "onnx_relative_logit_difference": measured["relative_logit_difference"],
        "onnx_test_error": 100 * (1 - accuracy(logits, data["test_labels"].numpy())),
        "num_test_images": len(test_images),
    }
    return report, logits
