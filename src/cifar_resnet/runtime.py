"""Where and how a model runs: the device, its backend settings, bf16 autocast, the memory format,
torch.compile and CUDA graph replay. The trainer, the evaluation and the benchmark all take these
decisions here, so a switch means the same thing in each. bf16, channels_last and compilation act on
CUDA only."""

from __future__ import annotations

import logging
import os

import torch

from cifar_resnet.errors import StudyError

log = logging.getLogger(__name__)

SWITCHES = ("compile", "bf16", "channels_last", "cuda_graphs")


def select_device(requested: str) -> torch.device:
    if requested == "cpu":
        log.info("device: the CPU, as the config asks")
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda")
        log.info(
            "device: %s (CUDA_VISIBLE_DEVICES=%s)",
            torch.cuda.get_device_name(device),
            os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        )
        return device
    if requested == "cuda":
        raise StudyError(
            "runtime.device is 'cuda' but CUDA is not available to this job; "
            "run it on a GPU node or set runtime.device to auto."
        )
    log.warning("device: CUDA is not available, training on the CPU (%d threads)", torch.get_num_threads())
    return torch.device("cpu")


def configure_backends(device: torch.device, runtime: dict) -> None:
    if device.type != "cuda":
        return
    if runtime["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def applies(switch: str, device: torch.device, runtime: dict) -> bool:
    """Whether ``runtime``'s ``switch`` (one of ``SWITCHES``) changes what runs on ``device``: each acts
    on CUDA only, and CUDA graphs only under compile."""
    if switch == "cuda_graphs":
        return applies("compile", device, runtime) and runtime["cuda_graphs"]
    return device.type == "cuda" and runtime[switch]


def inactive_switches(device: torch.device, runtime: dict) -> list[str]:
    """The switches ``runtime`` turns on that do not act on ``device``: with them, a run there is the
    same run as without them."""
    return [switch for switch in SWITCHES if runtime[switch] and not applies(switch, device, runtime)]


def autocast(device: torch.device, runtime: dict):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=applies("bf16", device, runtime))


def memory_format(device: torch.device, runtime: dict) -> torch.memory_format:
    return torch.channels_last if applies("channels_last", device, runtime) else torch.contiguous_format


def to_device(model: torch.nn.Module, device: torch.device, runtime: dict) -> torch.nn.Module:
    return model.to(device=device, memory_format=memory_format(device, runtime))


def uses_compile(device: torch.device, runtime: dict) -> bool:
    return applies("compile", device, runtime)


def compile_model(model, runtime: dict):
    """``model`` under torch.compile (Inductor), with CUDA graphs when ``runtime`` asks for them."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # fall back to eager where compilation is unavailable
    return torch.compile(model, mode="reduce-overhead" if runtime["cuda_graphs"] else "default")


def forward_of(model: torch.nn.Module, device: torch.device, runtime: dict):
    """What the trainer and the evaluation call: ``model`` itself, or compiled where the runtime says so."""
    return compile_model(model, runtime) if uses_compile(device, runtime) else model


def mark_cuda_graph_step(device: torch.device, runtime: dict) -> None:
    """Tell CUDA graph replay that a new step begins: the previous step's outputs, which live in the
    graphs' memory pool, may now be overwritten."""
    if applies("cuda_graphs", device, runtime):
        torch.compiler.cudagraph_mark_step_begin()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
