"""Built-in architectures: the YOLOv5 family (v6.1) and a small ResNet-style CNN for tests."""

import torch
import torch.nn as nn

from .resnet import TinyResNet, tiny_resnet
from .yolov5 import YOLOv5, yolov5, yolov5_custom, yolov5l, yolov5m, yolov5n, yolov5s, yolov5x

# Builders a graphprune checkpoint may name in its recipe.  Only these are ever called when a
# checkpoint is loaded: a recipe cannot make graphprune import or run anything else.
BUILDERS = {
    "yolov5n": yolov5n,
    "yolov5s": yolov5s,
    "yolov5m": yolov5m,
    "yolov5l": yolov5l,
    "yolov5x": yolov5x,
    "yolov5_custom": yolov5_custom,
    "tiny_resnet": tiny_resnet,
}
# the builders that make a detector graphprune can train (the rest are test fixtures)
DETECTORS = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x", "yolov5_custom")


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random γ, β and running statistics, in place.

    |γ| is log-uniform on [1e-3, 1] with a random sign, so a global threshold or ratio has
    something to choose between: a stand-in for a sparse-trained model where none is at hand
    (``graphprune compile --random-bn``), and the randomised statistics the tests ask for."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.affine:
                    sign = torch.where(torch.rand(n, generator=g) < 0.9, 1.0, -1.0)
                    m.weight.copy_(sign * 10 ** (-3 * torch.rand(n, generator=g)))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """``randomize_batchnorm``, and random γ and β for every affine GroupNorm and LayerNorm too
    (|γ| log-uniform on [1e-3, 1], β normal with σ = 0.1), in place: the stand-in for a trained
    model that has other norm layers than BatchNorm."""
    randomize_batchnorm(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and \
                    getattr(m, "weight", None) is not None:
                shape = m.weight.shape
                m.weight.copy_(10 ** (-3 * torch.rand(shape, generator=g)))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(shape, generator=g))
    return model


def build(name: str, **kwargs):
    """Build a registered architecture by name (see ``BUILDERS``)."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: built-in models are "
                         f"{', '.join(sorted(BUILDERS))}") from None
    return builder(**kwargs)


__all__ = ["BUILDERS", "DETECTORS", "TinyResNet", "YOLOv5", "build", "randomize_batchnorm", "randomize_norms", "tiny_resnet", "yolov5", "yolov5_custom", "yolov5l",
           "yolov5m", "yolov5n", "yolov5s", "yolov5x"]
