"""ResNet-style models for the tests (no torchvision): the CIFAR ResNet of He et al. 2016 as practitioners write it,
with BasicBlocks (two 3×3 convolutions, BatchNorm, a skip connection; a 1×1 convolution shortcut where the shape
changes), global average pooling, and the input normalization ``(x − mean) / std`` inline in ``forward``.

``cifar_resnet()`` is ResNet-18-shaped (stages of 2, 2, 2, 2 blocks, widths w, 2w, 4w, 8w) for 3×32×32 inputs;
``digits_resnet()`` is a small one for the bundled 1×8×8 digits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``, the shortcut a 1×1 convolution (+ BatchNorm) when the
    stride or the width changes, else the identity."""

    def __init__(self, cin: int, cout: int, stride: int = 1, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = _norm(cout, batch_norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not batch_norm)
        self.bn2 = _norm(cout, batch_norm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm),
                                          _norm(cout, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # traced as an addition: a residual connection of two bounded tensors
        return F.relu(out)


class ResNet(nn.Module):
    """A CIFAR-style ResNet: 3×3 stem, stages of :class:`BasicBlock` (the first block of each later stage halves
    the resolution), global average pooling, a linear classifier. Inputs in [0, 1] are normalized inside
    ``forward`` with buffers ``mean`` and ``std``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 blocks: Sequence[int] = (2, 2, 2, 2), mean: Sequence[float] = CIFAR_MEAN,
                 std: Sequence[float] = CIFAR_STD, batch_norm: bool = True, pool: str = "adaptive") -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=not batch_norm)
        self.bn = _norm(width, batch_norm)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1, batch_norm=batch_norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_kind = pool
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        out = F.relu(self.bn(self.stem(x)))
        out = self.layers(out)
        if self.pool_kind == "adaptive":
            out = torch.flatten(self.pool(out), 1)
        else:  # global average pooling written as a mean over the spatial dimensions
            out = out.mean(dim=(2, 3))
        return self.fc(out)


def cifar_resnet(width: int = 16, blocks: Sequence[int] = (2, 2, 2, 2), **kw) -> ResNet:
    """ResNet-18-shaped for 3×32×32 CIFAR inputs (width 64 is the usual ResNet-18)."""
    return ResNet(3, 10, width, blocks, **kw)


def digits_resnet(width: int = 8, blocks: Sequence[int] = (1, 1), batch_norm: bool = False, **kw) -> ResNet:
    """A small ResNet for the 1×8×8 digits (mean and std of the digits training pixels)."""
    return ResNet(1, 10, width, blocks, mean=(0.305,), std=(0.383,), batch_norm=batch_norm, **kw)


def randomize_batch_norm(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial running statistics and affine parameters, some scales negative (the sign swaps the bounds)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 3.0 - 1.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model
