"""graphprune: a structured-pruning compiler for PyTorch object detectors (L1RR).

    import graphprune as gp
    result = gp.compile(model, torch.zeros(1, 3, 640, 640), prune_ratio=0.5)
    result.module            # the slim nn.Module (a torch.fx.GraphModule)
    result.masks, result.pinned, result.stats
    result.save("slim.pt"); result.export_onnx("slim.onnx"); gp.load("slim.pt")
    ref = gp.zero_mask(model, result.masks)   # what the slim model is checked against

    # prune as far as the feature attention loss allows (L1RR Eq. 1-2)
    calib = gp.CalibrationSet.from_dataset(val_dataset, 64)
    found = gp.prune_to_target(model, torch.zeros(1, 3, 640, 640), calib, lfa_target=0.01)

    # prune to a measured speed: half the latency on onnxruntime's CPU provider
    fast = gp.prune_to_latency(model, torch.zeros(1, 3, 640, 640), 0.5, runtime="ort-cpu")

    # round each layer's width to one measured fast on the runtime (cached per machine)
    result = gp.compile(model, x, prune_ratio=0.5, round_to=gp.WidthTable("ort-cpu"))
"""

from .attention import CalibrationSet, feature_attention, lfa
from .checkpoint import load
from .errors import (CheckpointError, GraphpruneError, GraphpruneWarning, MaskError, TraceFailure,
                     VerificationError)
from .masks import zero_mask
from .pipeline import CompileResult, ModelReport, analyze, compile
from .latency import prune_to_latency
from .search import prune_to_target
from .sparsity import SparsityRegularizer
from .tracing import trace
from .widths import WidthTable

__version__ = "0.1.0"

__all__ = ["CalibrationSet", "CheckpointError", "CompileResult", "GraphpruneError", "GraphpruneWarning",
           "MaskError", "ModelReport", "SparsityRegularizer", "TraceFailure", "VerificationError",
           "WidthTable", "analyze", "compile", "feature_attention", "lfa", "load", "prune_to_latency",
           "prune_to_target",
           "trace", "zero_mask"]
