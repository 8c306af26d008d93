"""Static post-training INT8 quantisation of the exported model with
onnxruntime's quantisation tools.

onnxruntime's tools, not PyTorch's PT2E flow: they quantise the very file that is deployed and
checked, after the exporter's graph optimisation (batch norm folded into the convolutions), and
onnxruntime is the engine whose latency is measured. The format is QDQ with unsigned 8-bit
activations and per-channel signed 8-bit weights (U8S8): on an x86 CPU with VNNI it runs faster than
signed activations (S8S8) at the same test accuracy (docs/benchmark.md), and onnxruntime's ARM kernels
take U8S8 too. Activation ranges are
calibrated (min-max) on images of the training split only: validation selects models and the test
split is used once per model, so neither may tune the deployed one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from cifar_resnet.export import INPUT_NAME, accuracy, agreement, onnx_logits, onnx_session
from cifar_resnet.files import atomic_output

CALIBRATION_BATCH = 64
CALIBRATION_SEED = 0


def calibration_indices(train_count: int, count: int) -> torch.Tensor:
    """``count`` positions in the training split, the same for every run: a seeded draw, sorted."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    return torch.sort(torch.randperm(train_count, generator=generator)[:count]).values


class CalibrationImages:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, in batches."""

    def __init__(self, images: np.ndarray):
        self.batches = iter(
            [images[start : start + CALIBRATION_BATCH] for start in range(0, len(images), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(float_path: Path, int8_path: Path, calibration_images: np.ndarray) -> None:
    """Write the INT8 model of ``float_path`` to ``int8_path``, calibrated on ``calibration_images``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch, atomic_output(int8_path) as temporary:
        # Shape inference first, as onnxruntime asks: the quantiser needs every tensor's shape.
        inferred = Path(scratch) / "inferred.onnx"
        quant_pre_process(str(float_path), str(inferred), skip_optimization=True)
        quantize_static(
            str(inferred),
            str(temporary),
            CalibrationImages(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def quantize_and_measure(
    float_path: Path, int8_path: Path, data: dict, float_logits: np.ndarray, calibration_images: int
) -> dict:
    """Quantise the exported model on ``calibration_images`` training images, then measure the INT8 model
    once on the test split: its error, and its agreement with the float model's ``float_logits``."""
    indices = calibration_indices(len(data["train_images"]), calibration_images)
    quantize_int8(float_path, int8_path, data["train_images"][indices].numpy())
    session = onnx_session(int8_path, threads=torch.get_num_threads())
    logits = onnx_logits(session, data["test_images"].numpy())
    return {
        "int8_test_error": 100 * (1 - accuracy(logits, data["test_labels"].numpy())),
        "int8_top1_agreement": agreement(float_logits, logits)["top1_agreement"],
        "calibration": {"split": "train", "indices": indices.tolist()},
    }
