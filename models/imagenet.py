"""ImageNet architectures of the Deep Defense paper (AlexNet, ResNet-18): torchvision's own models, reversible.

Each is ``revnet.convert`` of a fresh torchvision model (``weights=None``: random weights, nothing is
downloaded), so it is a :class:`revnet.Graph` that shares the torchvision model's parameters and keeps its
``state_dict`` keys: torchvision's pretrained ``state_dict`` loads into it unchanged. Inputs ``(N, 3, 224, 224)``
(preprocessed), outputs ``(N, num_classes)`` logits. Both end in an adaptive average pooling, so smaller inputs
work too (AlexNet needs at least 63×63; ResNet-18 runs on CIFAR-sized 32×32). torchvision is imported when a
model is built, so ``import models`` stays as fast as before for the MNIST and CIFAR-10 models.
"""

from __future__ import annotations

from torch import nn

import revnet


def alexnet(num_classes: int = 1000) -> nn.Module:
    """``torchvision.models.alexnet`` (5 convolutions, 3 max poolings, adaptive avgpool 6×6, 3 linear layers
    with Dropout 0.5 before the first two) as a ``revnet.Graph``."""
    import torchvision

    return revnet.convert(torchvision.models.alexnet(weights=None, num_classes=num_classes))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """``torchvision.models.resnet18`` (BatchNorm, residual adds) as a ``revnet.Graph``."""
    import torchvision

    return revnet.convert(torchvision.models.resnet18(weights=None, num_classes=num_classes))


def resnet18_mnist() -> nn.Module:
    """``torchvision.models.resnet18(num_classes=10)`` with a one-channel stem (its first convolution takes
    ``(N, 1, 28, 28)`` MNIST images; otherwise torchvision's own ResNet-18), as a ``revnet.Graph``: Deep Defense
    through residual blocks and BatchNorm on real images, here, where CIFAR-10 and ImageNet are not available.
    At 28×28 the stem (stride 2 and a max pooling) leaves 7×7 maps and layer4 1×1."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return revnet.convert(model)
