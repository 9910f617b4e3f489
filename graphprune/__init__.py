"""graphprune: a structured-pruning compiler for PyTorch object detectors (L1RR).

    import graphprune as gp
    result = gp.compile(model, torch.zeros(1, 3, 640, 640), prune_ratio=0.5)
    result.module            # the slim nn.Module (a torch.fx.GraphModule)
    result.masks, result.pinned, result.stats
    result.save("slim.pt"); result.export_onnx("slim.onnx"); gp.load("slim.pt")
    ref = gp.zero_mask(model, result.masks)   # what the slim model is checked against
"""

from .errors import (CheckpointError, GraphpruneError, GraphpruneWarning, MaskError, TraceFailure,
                     VerificationError)
from .export import load
from .masks import zero_mask
from .pipeline import CompileResult, ModelReport, analyze, compile
from .tracing import trace

__version__ = "0.1.0"

__all__ = ["CheckpointError", "CompileResult", "GraphpruneError", "GraphpruneWarning",
           "MaskError", "ModelReport", "TraceFailure", "VerificationError", "analyze", "compile",
           "load", "trace", "zero_mask"]
