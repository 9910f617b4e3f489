"""graphprune's compiler passes, one a file, in pipeline order.

Each pass is a plain function ``(GraphModule, CompileContext) -> PassResult`` (torch.fx's pass
protocol) that reads and writes namespaced metadata on nodes (``node.meta["graphprune.*"]``) and
its findings on the context.  ``graphprune.pipeline.run_passes`` runs them in order.
"""

from .propagate_shapes import propagate_shapes
from .collect_statistics import collect_statistics
from .mask_channels import mask_channels
from .reconstruct_residuals import reconstruct_residuals
from .slim_layers import slim_layers
from .verify_equivalence import verify_equivalence

PIPELINE = (
    propagate_shapes,
    collect_statistics,
    mask_channels,
    reconstruct_residuals,
    slim_layers,
    verify_equivalence,
)

__all__ = ["PIPELINE", "collect_statistics", "mask_channels", "propagate_shapes",
           "reconstruct_residuals", "slim_layers", "verify_equivalence"]
