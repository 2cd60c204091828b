"""LoadPass: read the model file (or take a ModelProto) and check it is a valid ONNX model."""

from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

from onnxflow.errors import OnnxflowError
from onnxflow.pipeline import Pass, PruneState


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file, turning every way it can be wrong into a one-line `OnnxflowError`."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise OnnxflowError(f"no such file: {p}")
    if os.path.isdir(p):
        raise OnnxflowError(f"{p} is a directory, not an ONNX model file")
    if os.path.getsize(p) == 0:
        raise OnnxflowError(f"{p} is empty, not an ONNX model")
    try:
        model = onnx.load(p, load_external_data=True)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxflowError(f"{p} is not a readable ONNX model ({_first_line(e)})") from None
    except OSError as e:
        raise OnnxflowError(f"cannot read {p} or its external data: {_first_line(e)}") from None
    check_model(model, p)
    return model


def check_model(model: onnx.ModelProto, label: str) -> None:
    """Reject protobufs that are not models and models that fail onnx.checker."""
    if not isinstance(model, onnx.ModelProto):
        raise OnnxflowError(f"{label}: expected an onnx.ModelProto, got {type(model).__name__}")
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxflowError(f"{label} is not an ONNX model: it has no graph nodes")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise OnnxflowError(f"{label} fails onnx.checker: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


class LoadPass(Pass):
    """Fills `state.model` from `state.source` unless a model was given directly."""

    provides = ("model",)

    def run(self, state: PruneState) -> None:
        if state.model is None:
            if state.source is None:
                raise OnnxflowError("no model given")
            state.model = load_model(state.source)
        else:
            check_model(state.model, state.source or "model")
