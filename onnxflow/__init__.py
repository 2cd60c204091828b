"""onnxflow: framework-agnostic SynFlow pruning of ONNX models.

import onnxflow
pruned, masks, log_scores, report = onnxflow.prune("model.onnx", sparsity=0.99)
onnxflow.save(onnxflow.prune(...), "model.pruned.onnx", masks="masks.npz")
torch_masks = onnxflow.map_masks(masks, "model.onnx", torch_model.state_dict())
"""

from onnxflow.api import PruneResult, ScoreResult, prune, save, score
from onnxflow.errors import OnnxflowError, UnsupportedOpError
from onnxflow.flow import Const, Flow, FlowBuilder, FlowRule, NodeContext
from onnxflow.flow.registry import RuleRegistry, default_rules, flow_rule, register_flow_rule
from onnxflow.mapping import MaskMappingError, map_masks
from onnxflow.options import PruneOptions
from onnxflow.report import Report

__version__ = "0.1.0"

__all__ = [
    "Const",
    "Flow",
    "FlowBuilder",
    "FlowRule",
    "MaskMappingError",
    "NodeContext",
    "OnnxflowError",
    "PruneOptions",
    "PruneResult",
    "Report",
    "RuleRegistry",
    "ScoreResult",
    "UnsupportedOpError",
    "default_rules",
    "flow_rule",
    "map_masks",
    "prune",
    "register_flow_rule",
    "save",
    "score",
]
