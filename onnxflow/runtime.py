"""onnxruntime sessions: provider choice and quiet start-up.

`auto` uses CUDA when onnxruntime-gpu is installed and a session on the GPU actually starts
(the GPU wheel lists the CUDA provider even on machines without a GPU or CUDA libraries, and
then prints long provider errors); otherwise the CPU. Either wheel, GPU or plain, works.

onnxflow depends on the plain `onnxruntime`; the `gpu` extra adds `onnxruntime-gpu`. Both
wheels install the same `onnxruntime` module into the same folder, so with both installed
the module is whichever was written last: onnxflow then warns once, naming the fix.
"""

from __future__ import annotations

import importlib.metadata
import logging
from functools import cache

import onnxruntime as ort

from onnxflow.errors import OnnxflowError, Opt

logger = logging.getLogger(__name__)

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


LOG_SEVERITY = 4
"""onnxruntime log level of every session onnxflow starts: fatal only. Its warnings (graph
optimizer notes such as `unsqueeze_elimination.cc ... cannot remove node`) mean nothing to a
user, and its errors are raised as exceptions that onnxflow reports on one line."""


def quiet_onnxruntime() -> None:
    """Silence onnxruntime's default logger, which sessions started by other libraries use
    (graph-surgeon's constant folding creates its own session, without options): call before
    any such session is created."""
    ort.set_default_logger_severity(LOG_SEVERITY)


def _options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = LOG_SEVERITY
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads go on spinning after a run by default, taking the cores that the numpy
    # work between two flow-model runs (selection, masking) needs.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


@cache
def _cuda_usable() -> bool:
    """Whether a CUDA session really starts here (checked once per process)."""
    if _PROVIDERS["cuda"] not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    quiet_onnxruntime()
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), _options(), providers=[_PROVIDERS["cuda"]]
        )
        return _PROVIDERS["cuda"] in sess.get_providers()
    except Exception as e:  # noqa: BLE001 - any failure means no usable GPU
        logger.debug("CUDA provider not usable: %s", e)
        return False
    finally:
        quiet_onnxruntime()


RUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
)
"""Distributions that each install the `onnxruntime` module."""


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed in this environment, with their versions."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def several_runtimes_message() -> str | None:
    """A one-line explanation when several onnxruntime distributions share the module."""
    found = installed_runtimes()
    if len(found) < 2:
        return None
    return (
        f"several onnxruntime distributions are installed ({', '.join(found)}); they share "
        f"one `onnxruntime` module, now onnxruntime {ort.__version__}. Keep one: "
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
        "(or onnxruntime for the CPU only)"
    )


@cache
def _warn_several_runtimes() -> None:
    message = several_runtimes_message()
    if message is not None:
        logger.warning(message)


def resolve_provider(provider: str) -> str:
    """Map `auto|cpu|cuda` to the provider that will run, or explain why it cannot."""
    _warn_several_runtimes()
    if provider == "cpu":
        return "cpu"
    usable = _cuda_usable()
    if provider == "cuda" and not usable:
        raise OnnxflowError(
            "{opt}: no usable CUDA device "
            "(needs onnxruntime-gpu: pip install 'onnxflow[gpu]', an NVIDIA GPU and the "
            "CUDA libraries)",
            opt=Opt("provider", "cuda"),
        )
    return "cuda" if usable else "cpu"


def ort_session(model: bytes | str, provider: str, *, arena: bool = True) -> ort.InferenceSession:
    """A session on `cpu` or `cuda` (already resolved), CPU as fallback for ops CUDA lacks.

    `arena=False` turns off onnxruntime's CPU memory arena, which grows in powers of two and
    keeps its peak: large models then hold only the tensors alive, at the cost of fresh
    allocations every run."""
    providers = [_PROVIDERS["cpu"]]
    if provider == "cuda":
        providers.insert(0, _PROVIDERS["cuda"])
    quiet_onnxruntime()
    options = _options()
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model, options, providers=providers)
