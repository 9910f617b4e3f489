"""A small ResNet-style classifier that exercises what detectors share with classifiers.

Identity residual adds, a strided block whose shortcut is a 1x1 Conv+BN, an inverted block with
a depthwise 3x3 convolution (channels structurally coupled through the depthwise layer), and a
pooling -> flatten -> Linear head.  It is small enough to compile in well under a second.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn(c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1)
        self.relu = nn.ReLU()
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu(self.conv1(x)))
        return self.relu(y + self.shortcut(x))


class InvertedBlock(nn.Module):
    """Pointwise expand, depthwise 3x3, pointwise project, plus the identity."""

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        hidden = channels * expansion
        self.expand = _conv_bn(channels, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, 1, groups=hidden)
        self.project = _conv_bn(hidden, channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand(x))
        y = self.act(self.depthwise(y))
        return x + self.project(y)


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, width, 3, 1), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), InvertedBlock(2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_resnet(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> TinyResNet:
    model = TinyResNet(num_classes, width, in_channels)
    model.graphprune_config = {"builder": "tiny_resnet",
                               "kwargs": {"num_classes": num_classes, "width": width,
                                          "in_channels": in_channels}}
    return model
