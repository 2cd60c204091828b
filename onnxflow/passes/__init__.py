"""The passes of the pruning pipeline, one per module, in pipeline order."""

from onnxflow.passes.apply_masks import ApplyMasksPass
from onnxflow.passes.build_dag import BuildDagPass
from onnxflow.passes.linearize import LinearizePass
from onnxflow.passes.load import LoadPass
from onnxflow.passes.normalize import NormalizePass
from onnxflow.passes.report import ReportPass
from onnxflow.passes.sparse_storage import SparseStoragePass
from onnxflow.passes.synflow import SynFlowPass

__all__ = [
    "ApplyMasksPass",
    "BuildDagPass",
    "LinearizePass",
    "LoadPass",
    "NormalizePass",
    "ReportPass",
    "SparseStoragePass",
    "SynFlowPass",
]
