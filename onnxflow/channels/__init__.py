"""Channel pruning: remove whole channels, write a smaller dense model.

Three parts kept apart (as Torch-Pruning keeps its dependency graph, importance and
pruner apart): `groups` traces which channel slots go together, `score` ranks and selects
groups with the weight mode's flow engine and schedule, `materialize` writes the compact
model. `api.prune_channels` runs them in order.
"""

from onnxflow.channels.api import ChannelResult, prune_channels
from onnxflow.channels.groups import ChannelGroups, trace_channels

__all__ = ["ChannelGroups", "ChannelResult", "prune_channels", "trace_channels"]
