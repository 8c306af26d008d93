"""Where and how a model runs, decided once per job: ``Runtime`` holds the device and what the config's
``runtime`` section means there (bf16 autocast, memory format, torch.compile, CUDA graph replay, the
optimizer's fused kernels). The trainer, the evaluation and the benchmark take the same object, so a
switch means the same thing in each. Every switch acts on CUDA; bf16, channels_last, compile and the
fused optimizer act on the CPU too when ``runtime.switches_on_cpu`` says so (tests run the code a GPU
job runs that way), and CUDA graphs act on CUDA, under compile, only."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Runtime:
    """What a job's model runs with on its device, each switch already decided for that device."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 autocast, or none
    memory_format: torch.memory_format
    compile: bool
    cuda_graphs: bool
    fused_optimizer: bool  # fused kernels where the optimizer has them, else foreach
    deterministic: bool  # deterministic CUDA kernels; the CPU always is
    eval_batch_size: int
    not_applied: tuple[str, ...]  # switches the config turns on that do not act on this device

    @classmethod
    def resolve(cls, config: dict, device: torch.device) -> Runtime:
        """The runtime of the config's ``runtime`` section on ``device``: bf16, channels_last, compile
        and the fused optimizer act where the device is CUDA or ``switches_on_cpu`` holds, CUDA graphs
        on CUDA under compile only."""
        acting = device.type == "cuda" or (device.type == "cpu" and config["switches_on_cpu"])
        graphs = device.type == "cuda" and acting and config["compile"]
        applied = tuple(s for s in SWITCHES if config[s] and (graphs if s == "cuda_graphs" else acting))
        return cls(
            device=device,
            autocast_dtype=torch.bfloat16 if "bf16" in applied else None,
            memory_format=torch.channels_last if "channels_last" in applied else torch.contiguous_format,
            compile="compile" in applied,
            cuda_graphs="cuda_graphs" in applied,
            fused_optimizer=acting,
            deterministic=config["deterministic"] and device.type == "cuda",
            eval_batch_size=config["eval_batch_size"],
            not_applied=tuple(s for s in SWITCHES if config[s] and s not in applied),
        )

    @property
    def applied(self) -> tuple[str, ...]:
        """The switches that act on this device, in SWITCHES' order."""
        bf16, channels_last = self.autocast_dtype is not None, self.memory_format == torch.channels_last
        acting = (self.compile, bf16, channels_last, self.cuda_graphs)  # in SWITCHES' order
        return tuple(switch for switch, on in zip(SWITCHES, acting, strict=True) if on)

    @classmethod
    def start(cls, config: dict) -> Runtime:
        """A job's runtime: the device its config asks for, with that device's backends configured."""
        runtime = cls.resolve(config, select_device(config["device"]))
        runtime.configure_backends()
        return runtime

    def configure_backends(self) -> None:
        if self.device.type != "cuda":
            return
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Set either way: the setting is global, and a process that builds several trainers (the
        # benchmark, the tests) must not keep an earlier one's.
        torch.use_deterministic_algorithms(self.deterministic)
        torch.backends.cudnn.benchmark = not self.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def to_device(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(device=self.device, memory_format=self.memory_format)

    def forward_of(self, model):
        """What the trainer and the evaluation call: ``model`` (a module or a function) itself, or
        compiled where the runtime says so."""
        return CompiledForward(model, self.cuda_graphs) if self.compile else model

    def mark_step(self) -> None:
        """Tell CUDA graph replay that a new step begins: the previous step's outputs, which live in the
        graphs' memory pool, may now be overwritten."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def execution(self, optimizer: torch.optim.Optimizer) -> dict:
        """What the config switched on and what actually ran, as a job logs it and records it in
        ``train.json``."""
        return {
            "device": self.device.type,
            "applied": list(self.applied),
            "not_applied": list(self.not_applied),
            "deterministic": self.deterministic,
            "optimizer": "fused" if optimizer.defaults.get("fused") else "foreach",
        }


class CompiledForward(torch.nn.Module):
    """``model`` (a module or a function) under torch.compile (Inductor; with CUDA graphs when
    ``cuda_graphs``) as one whole graph per mode, with static shapes. A compilation that fails, or a
    graph break, raises StudyError: a run whose config says compile never trains eagerly under that
    name."""

    def __init__(self, model, cuda_graphs: bool):
        super().__init__()
        import torch._dynamo.exc  # here, not per call: forward runs every training step

        mode = "reduce-overhead" if cuda_graphs else "default"
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_execution(ran: dict) -> str:
    applied = ", ".join(ran["applied"]) or "eager fp32 NCHW"
    text = f"runtime on {ran['device']}: {applied}, {ran['optimizer']} optimizer"
    if ran["deterministic"]:
        text += ", deterministic kernels"
    if ran["not_applied"]:
        text += f"; not applied on {ran['device']}: {', '.join(ran['not_applied'])}"
    return text


def share_compiled_code(folder: Path) -> None:
    """Keep Inductor's compiled code (its FX-graph and AOTAutograd caches, both on by default) in
    ``folder``, which every job of a workflow shares, so that a job whose graphs another job compiled
    loads them instead of compiling again. Inductor reads the folder at the first compilation."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder).resolve())


def compile_counts() -> dict:
    """What torch.compile did in this process: the graphs it compiled (train and eval mode are one
    each; more means recompilation) and the graphs Inductor ran without the CUDA graphs it was asked
    for (it logs why)."""
    from torch._dynamo.utils import counters  # imported already: torch.optim imports torch._dynamo

    return {
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "cuda_graph_skips": counters["inductor"]["cudagraph_skips"],
    }
