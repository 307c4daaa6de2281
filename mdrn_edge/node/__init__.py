"""mdrn-node: a worker beside an Orthanc that super-resolves every new MR series and forwards the result.

Orthanc receives (C-STORE from the scanner), stores, decides when a series is complete (``StableAge``) and forwards
with its own jobs; the node follows Orthanc's changes feed, runs :func:`mdrn_edge.runtime.super_resolve` and keeps
its progress in SQLite. Torch-free, like the runtime.
"""

from mdrn_edge.node.orthanc import Orthanc, OrthancError
from mdrn_edge.node.rules import Rules
from mdrn_edge.node.state import NodeState
from mdrn_edge.node.worker import Node, NodeConfig

__all__ = ["Node", "NodeConfig", "NodeState", "Orthanc", "OrthancError", "Rules"]
