"""YOLOv5 (release v6.1 layout) written for graphprune.

The network follows the published v6.1 architecture: Conv-BN-SiLU blocks, C3 blocks whose
bottlenecks form residual chains, SPPF, a PANet neck and a three-level anchor-based ``Detect``
head.  Layers live in ``model.model`` as an ``nn.Sequential`` routed by each layer's ``f``
attribute (the "from" index), so qualified parameter names (``model.2.cv1.conv.weight``) match
the YOLOv5 convention and checkpoints map one to one.

``yolov5s(num_classes=10)`` has 7,046,599 parameters, the baseline of the L1RR paper (Table 6).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

# Per-level anchors (pixels) of the COCO-trained YOLOv5 release; users with remote-sensing
# targets fit their own (the L1RR paper customises them, Table 1).
DEFAULT_ANCHORS: tuple[tuple[float, ...], ...] = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)

# (depth multiple, width multiple) of the five published sizes.
SCALES: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}


def _same_padding(kernel: int) -> int:
    return kernel // 2


def _round_width(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count up to a multiple of ``divisor`` (YOLOv5's rule)."""
    return int(math.ceil(channels / divisor) * divisor)


class Conv(nn.Module):
    """Convolution without bias, BatchNorm, SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, p: int | None = None,
                 groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, _same_padding(k) if p is None else p,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv; adds the input back when ``shortcut`` and the widths agree."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, groups: int = 1,
                 expansion: float = 0.5):
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden, c_out, 3, 1, groups=groups)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block with three convolutions: a bottleneck chain on one half, a bypass on the other."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True,
                 groups: int = 1, expansion: float = 0.5):
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(c_in, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, groups, expansion=1.0)
                                 for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast form: three chained max-pools concatenated with the input."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        p1 = self.m(x)
        p2 = self.m(p1)
        return self.cv2(torch.cat((x, p1, p2, self.m(p2)), 1))


class Concat(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.d = dim

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Detect(nn.Module):
    """Anchor-based detection head.

    Training mode returns the raw per-level maps ``[bs, na, ny, nx, no]``.  Evaluation mode also
    decodes them into boxes: ``(pred[bs, sum(na*ny*nx), no], maps)`` with ``pred`` holding
    ``xywh`` in input pixels, objectness and class probabilities (sigmoid applied, no NMS).
    The decoding grid is cached per level and rebuilt when the feature size changes; that
    shape-dependent branch makes this module untraceable by ``torch.fx``, so the tracer keeps
    it whole as a leaf.
    """

    def __init__(self, num_classes: int, anchors: Sequence[Sequence[float]],
                 channels: Sequence[int]):
        super().__init__()
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl
        self.anchor_grid = [torch.zeros(1)] * self.nl
        # anchors in units of the level's stride once the model has measured the strides
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32)
                             .view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

    def forward(self, x: list[torch.Tensor]):
        decoded = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                if self.grid[i].shape[2:4] != x[i].shape[2:4] or \
                        self.grid[i].device != x[i].device:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                p = x[i].sigmoid()
                xy = (p[..., 0:2] * 2 - 0.5 + self.grid[i]) * self.stride[i]
                wh = (p[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
                decoded.append(torch.cat((xy, wh, p[..., 4:]), -1).view(bs, -1, self.no))
        return x if self.training else (torch.cat(decoded, 1), x)

    def _make_grid(self, nx: int, ny: int, i: int):
        device, dtype = self.anchors.device, self.anchors.dtype
        shape = (1, self.na, ny, nx, 2)
        yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                torch.arange(nx, device=device, dtype=dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape)
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).expand(shape)
        return grid, anchor_grid


def _layer_table(num_classes: int, anchors) -> list[tuple]:
    """The v6.1 yolov5 layer table: (from, repeats, module, args) before width/depth scaling."""
    return [
        # backbone
        (-1, 1, Conv, [64, 6, 2, 2]),          # 0  P1/2
        (-1, 1, Conv, [128, 3, 2]),            # 1  P2/4
        (-1, 3, C3, [128]),                    # 2
        (-1, 1, Conv, [256, 3, 2]),            # 3  P3/8
        (-1, 6, C3, [256]),                    # 4
        (-1, 1, Conv, [512, 3, 2]),            # 5  P4/16
        (-1, 9, C3, [512]),                    # 6
        (-1, 1, Conv, [1024, 3, 2]),           # 7  P5/32
        (-1, 3, C3, [1024]),                   # 8
        (-1, 1, SPPF, [1024, 5]),              # 9
        # PANet neck
        (-1, 1, Conv, [512, 1, 1]),            # 10
        (-1, 1, nn.Upsample, [None, 2, "nearest"]),
        ([-1, 6], 1, Concat, [1]),             # 12 cat backbone P4
        (-1, 3, C3, [512, False]),             # 13
        (-1, 1, Conv, [256, 1, 1]),            # 14
        (-1, 1, nn.Upsample, [None, 2, "nearest"]),
        ([-1, 4], 1, Concat, [1]),             # 16 cat backbone P3
        (-1, 3, C3, [256, False]),             # 17 P3/8 small
        (-1, 1, Conv, [256, 3, 2]),            # 18
        ([-1, 14], 1, Concat, [1]),            # 19 cat head P4
        (-1, 3, C3, [512, False]),             # 20 P4/16 medium
        (-1, 1, Conv, [512, 3, 2]),            # 21
        ([-1, 10], 1, Concat, [1]),            # 22 cat head P5
        (-1, 3, C3, [1024, False]),            # 23 P5/32 large
        ([17, 20, 23], 1, Detect, [num_classes, anchors]),
    ]


class YOLOv5(nn.Module):
    """A YOLOv5 detector built from the v6.1 layer table with width/depth multipliers."""

    def __init__(self, num_classes: int = 80, depth_multiple: float = 0.33,
                 width_multiple: float = 0.50, anchors=DEFAULT_ANCHORS, in_channels: int = 3):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        widths: list[int] = []  # output channels of each layer, by layer index

        def width(j: int) -> int:
            return widths[j] if widths else in_channels

        layers, keep = [], set()
        for i, (src, repeats, block, args) in enumerate(_layer_table(num_classes, anchors)):
            n = max(round(repeats * depth_multiple), 1) if repeats > 1 else repeats
            if block in (Conv, C3, SPPF):
                c_in, c_out = width(src), _round_width(args[0] * width_multiple)
                layer = C3(c_in, c_out, n, *args[1:]) if block is C3 else \
                    block(c_in, c_out, *args[1:])
            elif block is Concat:
                c_out = sum(width(j) for j in src)
                layer = Concat(*args)
            elif block is Detect:
                layer = Detect(args[0], args[1], [width(j) for j in src])
                c_out = 0
            else:
                c_out = width(src)
                layer = block(*args)
            layer.f, layer.i = src, i
            keep.update(j % i for j in ([src] if isinstance(src, int) else src) if j != -1)
            layers.append(layer)
            widths.append(c_out)
        self.model = nn.Sequential(*layers)
        self.save = sorted(keep)
        self._measure_strides(in_channels)
        self._initialise()

    def _measure_strides(self, in_channels: int) -> None:
        head = self.model[-1]
        size = 256
        self.train()
        with torch.no_grad():
            maps = self.forward(torch.zeros(1, in_channels, size, size))
        head.stride.copy_(torch.tensor([size / m.shape[-2] for m in maps]))
        head.anchors /= head.stride.view(-1, 1, 1)
        self.stride = head.stride.clone()

    def _initialise(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
            elif isinstance(m, (nn.SiLU, nn.ReLU)):
                m.inplace = False
        # Prior for objectness (about 8 objects per 640x640 image) and for class probability.
        head = self.model[-1]
        for conv, s in zip(head.m, head.stride):
            b = conv.bias.view(head.na, -1)
            b.data[:, 4] += math.log(8 / (640 / float(s)) ** 2)
            b.data[:, 5:] += math.log(0.6 / (head.nc - 0.99999))

    def forward(self, x: torch.Tensor):
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else \
                    [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x


def yolov5(scale: str, num_classes: int = 80, **kwargs) -> YOLOv5:
    """Build a YOLOv5 of size ``scale`` (one of n, s, m, l, x)."""
    if scale not in SCALES:
        raise ValueError(f"unknown YOLOv5 scale {scale!r}: choose one of {', '.join(SCALES)}")
    depth, width = SCALES[scale]
    model = YOLOv5(num_classes, depth, width, **kwargs)
    model.graphprune_config = {"builder": f"yolov5{scale}",
                               "kwargs": {"num_classes": num_classes, **kwargs}}
    return model


def yolov5_custom(num_classes: int = 80, depth_multiple: float = 0.33,
                  width_multiple: float = 0.25, **kwargs) -> YOLOv5:
    """A YOLOv5 with any depth and width multipliers (e.g. the narrower dense models a pruned
    one is compared with); channel counts are rounded up to multiples of 8 as in YOLOv5."""
    for name, value in (("depth_multiple", depth_multiple), ("width_multiple", width_multiple)):
        if not (isinstance(value, (int, float)) and 0 < value <= 4):
            raise ValueError(f"{name} must be in (0, 4], got {value!r}")
    model = YOLOv5(num_classes, float(depth_multiple), float(width_multiple), **kwargs)
    model.graphprune_config = {"builder": "yolov5_custom",
                               "kwargs": {"num_classes": num_classes,
                                          "depth_multiple": float(depth_multiple),
                                          "width_multiple": float(width_multiple), **kwargs}}
    return model


def yolov5n(num_classes: int = 80, **kwargs) -> YOLOv5:
    return yolov5("n", num_classes, **kwargs)


def yolov5s(num_classes: int = 80, **kwargs) -> YOLOv5:
    return yolov5("s", num_classes, **kwargs)


def yolov5m(num_classes: int = 80, **kwargs) -> YOLOv5:
    return yolov5("m", num_classes, **kwargs)


def yolov5l(num_classes: int = 80, **kwargs) -> YOLOv5:
    return yolov5("l", num_classes, **kwargs)


def yolov5x(num_classes: int = 80, **kwargs) -> YOLOv5:
    return yolov5("x", num_classes, **kwargs)
