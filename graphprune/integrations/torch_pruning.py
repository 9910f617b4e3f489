"""Torch-Pruning's choice of channels, realised by graphprune's compiler.

A Torch-Pruning pruner (any of its importances and schedules) decides which channels go;
``masks_from_pruner`` reads that decision as graphprune keep-masks without letting the pruner
cut anything, so ``gp.compile(model, example, masks=...)`` builds the slim model, verified against
the zero-masked one, with residual reconstruction when wanted (``residual="couple"`` gives the
coupling Torch-Pruning itself uses). ``masks_from_importance`` builds the pruner too.

    import torch_pruning as tp
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(),
                                  pruning_ratio=0.5, ignored_layers=[model.head])
    masks = masks_from_pruner(model, pruner)
    slim = gp.compile(model, example, masks=masks, residual="couple").module
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch.nn as nn

from ..errors import GraphpruneError
from ..masks import features, producers


def masks_from_pruner(model: nn.Module, pruner: Any, apply: bool = False
                      ) -> dict[str, np.ndarray]:
    """{layer name: keep mask} for the channels ``pruner`` (a Torch-Pruning pruner built on
    ``model``) removes in its next step: per Torch-Pruning group, the output channels of its
    BatchNorms, or, in a group without BatchNorm, of its GroupNorms, LayerNorms, convolutions
    and linear layers (graphprune's other channel producers). The step runs in Torch-Pruning's
    interactive mode and, unless ``apply``, no group is pruned, so the model is not changed;
    with ``apply`` the pruner also cuts ``model`` itself (Torch-Pruning's own pruned model, to
    compare with)."""
    try:
        from torch_pruning.pruner import function  # deferred: torch-pruning loads on use
    except ImportError as exc:
        raise GraphpruneError("torch-pruning is not installed",
                              hint="pip install torch-pruning") from exc
    layers = producers(model)
    names = {id(m): n for n, m in layers.items()}
    masks = {n: np.ones(features(m), dtype=bool) for n, m in layers.items()}
    others = (function.prune_groupnorm_out_channels, function.prune_layernorm_out_channels,
              function.prune_conv_out_channels, function.prune_linear_out_channels)
    try:
        groups = iter(pruner.step(interactive=True))
    except (TypeError, AttributeError) as exc:
        raise GraphpruneError(f"{type(pruner).__name__} is not a Torch-Pruning pruner with an "
                              f"interactive step ({exc})",
                              hint="pass a torch_pruning.pruner.MetaPruner (or a subclass)") \
            from None
    for group in groups:         # lazily: with ``apply`` each group is cut before the next
        items = list(group)
        # bound methods: compared with ==
        bn = [(d, i) for d, i in items if d.handler == function.prune_batchnorm_out_channels]
        chosen = bn or [(d, i) for d, i in items if any(d.handler == h for h in others)]
        for dep, idxs in chosen:
            name = names.get(id(dep.target.module))
            if name is None:
                raise GraphpruneError("the pruner's model is not the model given",
                                      hint="build the pruner on the same model instance")
            masks[name][list(idxs)] = False
        if apply:
            group.prune()
    return {n: m for n, m in masks.items() if not m.all()}


def masks_from_importance(model: nn.Module, example_inputs: Any, importance: Any,
                          ratio: float, ignored_layers: Iterable[nn.Module] = (),
                          global_pruning: bool = False) -> dict[str, np.ndarray]:
    """Keep-masks from a Torch-Pruning importance (``tp.importance.*``) at ``ratio``, through
    its MetaPruner (per layer, or ranked across layers with ``global_pruning``); the model is
    not changed."""
    import torch_pruning as tp  # deferred: torch-pruning loads on use

    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=importance,
                                  pruning_ratio=ratio, global_pruning=global_pruning,
                                  ignored_layers=list(ignored_layers))
    return masks_from_pruner(model, pruner)


__all__ = ["masks_from_importance", "masks_from_pruner"]
