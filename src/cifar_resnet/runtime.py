"""Where and how a model runs: the device, its backend settings, bf16 autocast, the memory format,
torch.compile, CUDA graph replay and the optimizer's implementation. The trainer, the evaluation and
the benchmark all take these decisions here, so a switch means the same thing in each. Every switch
acts on CUDA; bf16, channels_last, compilation and the fused optimizer act on the CPU too when
``runtime.switches_on_cpu`` says so (tests run the code a GPU job runs that way), and CUDA graphs act
on CUDA only."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cifar_resnet.errors import StudyError

if TYPE_CHECKING:  # the optimizer module builds on this one
    from cifar_resnet.optimizer import Optimizer

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
    # Set either way: the setting is global, and a process that builds several trainers (the benchmark,
    # the tests) must not keep an earlier one's.
    torch.use_deterministic_algorithms(runtime["deterministic"])
    torch.backends.cudnn.benchmark = not runtime["deterministic"]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def switches_act_on(device: torch.device, runtime: dict) -> bool:
    """Whether bf16, channels_last, compile and the fused optimizer act on ``device``."""
    return device.type == "cuda" or (device.type == "cpu" and runtime["switches_on_cpu"])


def applies(switch: str, device: torch.device, runtime: dict) -> bool:
    """Whether ``runtime``'s ``switch`` (one of ``SWITCHES``) changes what runs on ``device``: each acts
    on CUDA, all but CUDA graphs on the CPU under ``switches_on_cpu``, and CUDA graphs only under
    compile."""
    if switch == "cuda_graphs":
        return device.type == "cuda" and applies("compile", device, runtime) and runtime["cuda_graphs"]
    return switches_act_on(device, runtime) and runtime[switch]


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


def optimizer_implementation(device: torch.device, runtime: dict, fusable: bool) -> dict:
    """The keyword that picks the optimizer's implementation: fused kernels where the switches act and
    the optimizer has them (``fusable``), else foreach."""
    return {"fused": True} if fusable and switches_act_on(device, runtime) else {"foreach": True}


class CompiledForward(torch.nn.Module):
    """``model`` (a module or a function) under torch.compile (Inductor; with CUDA graphs when
    ``runtime`` asks for them) as one whole graph per mode, with static shapes. A compilation that
    fails, or a graph break, raises StudyError: a run whose config says compile never trains eagerly
    under that name."""

    def __init__(self, model, runtime: dict):
        super().__init__()
        import torch._dynamo.exc  # here, not per call: forward runs every training step

        mode = "reduce-overhead" if runtime["cuda_graphs"] else "default"
        self.compiled = torch.compile(model, mode=mode, fullgraph=True, dynamic=False)
        self.compile_error = torch._dynamo.exc.TorchDynamoException

    def forward(self, *inputs):
        try:
            return self.compiled(*inputs)
        except self.compile_error as error:
            reason = next(iter(str(error).strip().splitlines()), "")
            raise StudyError(
                f"torch.compile failed ({type(error).__name__}: {reason}); "
                "set runtime.compile to false to train in eager mode."
            ) from error


def share_compiled_code(folder: Path) -> None:
    """Keep Inductor's compiled code (its FX-graph and AOTAutograd caches) in ``folder``, which every
    job of a workflow shares, so that a job whose graphs another job compiled loads them instead of
    compiling again. Call before the first compilation, where Inductor reads the folder; it reads the
    two switches, which force what is already torch's default, when first imported (in a forked job,
    by the fork server)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder).resolve())
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"


def compile_model(model, runtime: dict) -> CompiledForward:
    return CompiledForward(model, runtime)


def pads_last_batch(device: torch.device, runtime: dict) -> bool:
    """Whether an evaluation pads its last, smaller batch to the full size: a compiled forward has
    static shapes and would compile again for it (and CUDA graphs record again), which costs more than
    the padded images (docs/benchmark.md)."""
    return uses_compile(device, runtime)


def forward_of(model: torch.nn.Module, device: torch.device, runtime: dict):
    """What the trainer and the evaluation call: ``model`` itself, or compiled where the runtime says so."""
    return compile_model(model, runtime) if uses_compile(device, runtime) else model


def compile_counts() -> dict:
    """What torch.compile did in this process: the graphs it compiled (train and eval mode are one
    each; more means recompilation) and the graphs Inductor ran without the CUDA graphs it was asked
    for (it logs why)."""
    if "torch._dynamo" not in sys.modules:  # nothing was compiled; importing it to say so costs 0.9 s
        return {"compiled_graphs": 0, "cuda_graph_skips": 0}
    from torch._dynamo.utils import counters

    return {
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "cuda_graph_skips": counters["inductor"]["cudagraph_skips"],
    }


def execution(device: torch.device, runtime: dict, optimizer: Optimizer) -> dict:
    """What ``runtime`` switched on and what actually ran on ``device``, as a job logs it and records it
    in ``train.json``."""
    implementations = [name for name in ("fused", "foreach") if optimizer.defaults.get(name)]
    return {
        "device": device.type,
        "applied": [switch for switch in SWITCHES if applies(switch, device, runtime)],
        "not_applied": inactive_switches(device, runtime),
        "deterministic": runtime["deterministic"] and device.type == "cuda",
        "optimizer": implementations[0] if implementations else "for-loop",
    }


def describe_execution(ran: dict) -> str:
    applied = ", ".join(ran["applied"]) or "eager fp32 NCHW"
    text = f"runtime on {ran['device']}: {applied}, {ran['optimizer']} optimizer"
    if ran["deterministic"]:
        text += ", deterministic kernels"
    if ran["not_applied"]:
        text += f"; not applied on {ran['device']}: {', '.join(ran['not_applied'])}"
    return text


def mark_cuda_graph_step(device: torch.device, runtime: dict) -> None:
    """Tell CUDA graph replay that a new step begins: the previous step's outputs, which live in the
    graphs' memory pool, may now be overwritten."""
    if applies("cuda_graphs", device, runtime):
        torch.compiler.cudagraph_mark_step_begin()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
