"""Pass 4 — reconstruct residuals: channel orders for every value, plans for every add.

With independent masks the two branches of a residual add hold different channels (paper §3.2);
``graphprune.residuals`` chooses the channel orders that make the rebuilt adds cheap, and this
pass checks that the orders agree with the liveness the channel analysis found.
"""

from __future__ import annotations

import torch.fx
from torch.fx.passes.infra.pass_base import PassResult

from graphprune.context import CompileContext
from graphprune.errors import GraphpruneError
from graphprune.residuals import plan_orders


def reconstruct_residuals(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("reconstruct_residuals"):
        A = ctx.analysis
        plan_orders(A)
        bad = A.check_consistency()
        if bad:
            raise GraphpruneError(f"internal error: channel orders disagree with liveness at "
                                  f"{', '.join(bad[:5])}",
                                  hint="please report this model; compile with "
                                       "residual='couple' meanwhile")
    return PassResult(gm, False)


__all__ = ["reconstruct_residuals"]
