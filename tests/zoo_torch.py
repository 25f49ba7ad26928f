"""The zoo's PyTorch side: twins of keras.applications models, and a classic CNN.

Each is written as a PyTorch user who mirrors a Keras model would write it: the
same layers and hyperparameters (BatchNorm epsilon, TensorFlow's "same" padding
where Keras pads asymmetrically), channels-first, module order as the code reads.
Configs: ``size`` (input side), ``classes`` and ``broken``, a deliberate mistake
(``"epsilon"``: torch's default BatchNorm epsilon, ``"padding"``: symmetric
padding as torchvision writes it, ``"pool"``: average instead of max pooling,
``"stride"``: ResNet's stride on the 3x3 convolution, as torchvision's v1.5)
that keeps every shape, so only the numerical check can catch it.

Usage::

    import tests.zoo_torch  # registers the "zoo-*" torch builders
    model = polybundle.build("zoo-mobilenet_v2", {"size": 32, "classes": 5}, backend="torch")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import polybundle
from polybundle_torch.layers import register_kind


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (extra row/column at the end), as timm's.

    Usage::

        Conv2dSame(3, 8, 3, stride=2)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-1:-3:-1], self.kernel_size[::-1],
                                        self.stride[::-1], strict=True):
            total = max(kernel - stride if size % stride == 0 else kernel - size % stride, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, *, groups: int = 1,
          bias: bool = False, broken: str = "") -> nn.Conv2d:
    """Keras' Conv2D(padding="same"): symmetric when it can be, else :class:`Conv2dSame`."""
    if stride == 1 or broken == "padding":
        return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
    return Conv2dSame(cin, cout, kernel, stride, groups=groups, bias=bias)


def _bn(channels: int, eps: float, broken: str) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5 if broken == "epsilon" else eps)


# --- MobileNetV2 (keras.applications.MobileNetV2, alpha=1) ---------------------------------


def _divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1, residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, broken: str) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden, 1e-3, broken),
                       nn.ReLU6()]
        layers += [_conv(hidden, hidden, 3, stride, groups=hidden, broken=broken),
                   _bn(hidden, 1e-3, broken), nn.ReLU6(),
                   nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout, 1e-3, broken)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """keras.applications.MobileNetV2(alpha=1.0), channels-first."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes: int, broken: str = "") -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(3, 32, 3, 2, broken=broken), _bn(32, 1e-3, broken),
                                   nn.ReLU6()]
        cin = 32
        for expansion, filters, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                cout = _divisible(filters)
                layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1,
                                               expansion, broken))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), _bn(1280, 1e-3, broken), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# --- ResNet50 (keras.applications.ResNet50) --------------------------------------------------


class Bottleneck(nn.Module):
    """Keras' ResNet50 block1: stride on the first 1x1 convolution, biases on every conv."""

    def __init__(self, cin: int, filters: int, stride: int, shortcut: bool, broken: str) -> None:
        super().__init__()
        eps = 1.001e-5
        stride1, stride2 = (1, stride) if broken == "stride" else (stride, 1)  # torchvision's
        self.conv1 = nn.Conv2d(cin, filters, 1, stride1)
        self.bn1 = _bn(filters, eps, broken)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride2, padding=1)
        self.bn2 = _bn(filters, eps, broken)
        self.conv3 = nn.Conv2d(filters, 4 * filters, 1)
        self.bn3 = _bn(4 * filters, eps, broken)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, 4 * filters, 1, stride),
                                         _bn(4 * filters, eps, broken)) if shortcut else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(identity + self.bn3(self.conv3(out)))


class ResNet50(nn.Module):
    """keras.applications.ResNet50, channels-first, written as torchvision writes ResNets."""

    def __init__(self, classes: int, broken: str = "") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3)
        self.bn1 = _bn(64, 1.001e-5, broken)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin, stages = 64, []
        for filters, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = [Bottleneck(cin, filters, stride, True, broken)]
            stage += [Bottleneck(4 * filters, filters, 1, False, broken) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = 4 * filters
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


# --- VGG16 (keras.applications.VGG16, Flatten head) ------------------------------------------


class VGG16(nn.Module):
    """keras.applications.VGG16 with its Flatten head, channels-first, as torchvision writes it."""

    def __init__(self, classes: int, size: int, broken: str = "") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
            for _ in range(convs):
                layers += [nn.Conv2d(cin, filters, 3, padding=1), nn.ReLU()]
                cin = filters
            layers.append(nn.AvgPool2d(2) if broken == "pool" else nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = size // 32
        self.classifier = nn.Sequential(
            nn.Linear(512 * side * side, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# --- EfficientNetB0 (keras.applications.EfficientNetB0) --------------------------------------


class Standardize(nn.Module):
    """The twin of keras.layers.Normalization: ``(x - mean) / max(sqrt(variance), 1e-7)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (x - self.mean.view(shape)) / torch.sqrt(self.variance).clamp(min=1e-7).view(shape)


register_kind(Standardize, "normalization")


class MBConv(nn.Module):
    """EfficientNet's block: expand, depthwise, squeeze-excite, project, residual."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int,
                 broken: str) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = None
        if expansion != 1:
            self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                        _bn(hidden, 1e-3, broken), nn.SiLU())
        self.depthwise = nn.Sequential(
            _conv(hidden, hidden, kernel, stride, groups=hidden, broken=broken),
            _bn(hidden, 1e-3, broken), nn.SiLU())
        squeezed = max(1, int(cin * 0.25))
        self.se_reduce = nn.Conv2d(hidden, squeezed, 1)
        self.se_expand = nn.Conv2d(squeezed, hidden, 1)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False),
                                     _bn(cout, 1e-3, broken))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.depthwise(x if self.expand is None else self.expand(x))
        scale = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(out.mean((2, 3), True)))))
        out = self.project(out * scale)
        return x + out if self.residual else out


class EfficientNetB0(nn.Module):
    """keras.applications.EfficientNetB0 (with its Rescaling and Normalization), channels-first."""

    BLOCKS = [(3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2),
              (3, 3, 40, 80, 6, 2), (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2),
              (3, 1, 192, 320, 6, 1)]

    def __init__(self, classes: int, broken: str = "") -> None:
        super().__init__()
        self.normalize = Standardize(3)
        self.stem = nn.Sequential(_conv(3, 32, 3, 2, broken=broken), _bn(32, 1e-3, broken),
                                  nn.SiLU())
        blocks = []
        for kernel, repeats, cin, cout, expansion, stride in self.BLOCKS:
            for index in range(repeats):
                blocks.append(MBConv(cin if index == 0 else cout, cout, kernel,
                                     stride if index == 0 else 1, expansion, broken))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), _bn(1280, 1e-3, broken),
                                  nn.SiLU())
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x / 255.0))
        return self.classifier(self.head(self.blocks(x)).mean((2, 3)))


# --- ConvNeXtTiny (keras.applications.ConvNeXtTiny) -----------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over the channels of an NCHW tensor, as torchvision writes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block as its authors write it: LayerScale gamma is a Parameter of the block."""

    def __init__(self, dim: int, broken: str) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5 if broken == "epsilon" else 1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        out = self.gamma * self.pwconv2(F.gelu(self.pwconv1(out)))
        return x + out.permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    """keras.applications.ConvNeXtTiny (its ImageNet standardisation included), channels-first."""

    MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

    def __init__(self, classes: int, broken: str = "") -> None:
        super().__init__()
        dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)
        self.downsample = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4),
                                                       LayerNorm2d(dims[0], eps=1e-6))])
        for i in range(3):
            self.downsample.append(nn.Sequential(LayerNorm2d(dims[i], eps=1e-6),
                                                 nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, broken) for _ in range(depth)))
            for dim, depth in zip(dims, depths, strict=True))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        for downsample, stage in zip(self.downsample, self.stages, strict=True):
            x = stage(downsample(x))
        return self.head(self.norm(x.mean((2, 3))))


# --- a small ViT (its Keras twin is in zoo_keras) -------------------------------------------


class EncoderBlock(nn.Module):
    """A pre-norm transformer block with PyTorch's fused-QKV nn.MultiheadAttention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer: patch conv, class token, position embedding, two blocks."""

    def __init__(self, classes: int, size: int, patch: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(EncoderBlock(dim, 4), EncoderBlock(dim, 4))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# --- a classic PyTorch CNN (its Keras twin is in zoo_keras) ----------------------------------


class ClassicCNN(nn.Module):
    """A LeNet-style network as PyTorch tutorials write it: conv, BN, pool, Flatten, Linear."""

    def __init__(self, classes: int, size: int, broken: str = "") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = _bn(8, 1e-3, broken)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = _bn(16, 1e-3, broken)
        self.fc1 = nn.Linear(16 * (size // 4) ** 2, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


BUILDERS: dict[str, Any] = {
    "zoo-mobilenet_v2": lambda c: MobileNetV2(c["classes"], c.get("broken", "")),
    "zoo-resnet50": lambda c: ResNet50(c["classes"], c.get("broken", "")),
    "zoo-vgg16": lambda c: VGG16(c["classes"], c["size"], c.get("broken", "")),
    "zoo-efficientnet_b0": lambda c: EfficientNetB0(c["classes"], c.get("broken", "")),
    "zoo-convnext_tiny": lambda c: ConvNeXtTiny(c["classes"], c.get("broken", "")),
    "zoo-vit": lambda c: ViT(c["classes"], c["size"]),
    "zoo-classic_cnn": lambda c: ClassicCNN(c["classes"], c["size"], c.get("broken", "")),
}
"""Architecture name -> PyTorch builder (config -> model)."""

for _name, _builder in BUILDERS.items():
    polybundle.architecture(_name, backend="torch", replace=True)(_builder)
