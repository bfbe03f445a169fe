"""A MobileNetV2-style network for small images (Sandler et al. 2018): inverted residual blocks
with depthwise (grouped) 3x3 convolutions, the light student of the distillation benchmarks
(CRD's ``MobileNetV2`` with ``width=0.5`` is "mobile-half").

Layout: ``stem`` (3x3 conv-BN-ReLU6), ``stages`` (an ``nn.Sequential`` of stages, each an
``nn.Sequential`` of :class:`InvertedResidual` blocks), ``head`` (1x1 conv-BN-ReLU6), average
pooling, ``fc``. A block adds its input when it keeps the shape (stride 1, same channels).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2", "DEFAULT_SETTING"]

#: (expansion t, channels c, blocks n, stride s) per stage, for 32x32 inputs (CRD's setting).
DEFAULT_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    mods: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout)]
    return mods + [nn.ReLU6()] if act else mods


class InvertedResidual(nn.Module):
    """1x1 expansion (t > 1), depthwise 3x3, linear 1x1 projection; ``x + conv(x)`` when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        mods = _conv_bn(cin, hidden, 1) if expansion != 1 else []
        mods += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, act=False)
        self.conv = nn.Sequential(*mods)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def _scaled(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8.0)) * 8) if width != 1.0 else c


class MobileNetV2(nn.Module):
    """MobileNetV2 for ``[B, in_channels, H, W]`` images.

    Args:
        num_classes: outputs.
        width: multiplies every stage's channels (rounded to multiples of 8).
        setting: ``(t, c, n, s)`` per stage (default :data:`DEFAULT_SETTING`).
        last_channels: channels of the 1x1 head convolution.
        in_channels: input channels.
    """

    def __init__(self, num_classes: int = 10, *, width: float = 1.0,
                 setting: Sequence[tuple[int, int, int, int]] = DEFAULT_SETTING, last_channels: int = 1280,
                 in_channels: int = 3):
        super().__init__()
        cin = _scaled(32, width)
        self.stem = nn.Sequential(*_conv_bn(in_channels, cin, 3))
        stages = []
        for t, c, n, s in setting:
            cout = _scaled(c, width)
            blocks = []
            for i in range(int(n)):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, int(t)))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*_conv_bn(cin, int(last_channels), 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(int(last_channels), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(self.head(self.stages(self.stem(x))))))


def mobilenetv2(num_classes: int = 10, **kw) -> MobileNetV2:
    """:class:`MobileNetV2` (``width=0.5``: CRD's "mobile-half" student)."""
    return MobileNetV2(num_classes, **kw)
