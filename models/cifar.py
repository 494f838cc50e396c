"""CIFAR-10 architectures of the Deep Defense paper (ConvNet, NIN), as fresh ``revnet.Sequential`` networks.

Both take ``(N, 3, 32, 32)`` inputs (preprocessed; the preprocessing lives in the checkpoint, not in the network)
and return ``(N, 10)`` logits. The layer order is the one of the authors' code, ``models/cifar10.py`` in
ZiangYan/deepdefense.pytorch (the repository the project issue pins); the child names are that code's names
(``conv1``, ``pool1``, ``relu1``, …), so ``net.conv1`` is its first convolution. Weights use torch's default
initialisation (the authors' code uses Kaiming-normal weights and zero biases before loading their MatConvNet
models).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

import revnet


def convnet() -> revnet.Sequential:
    """ConvNet: conv 32@5×5 p2, maxpool 2, ReLU, conv 32@5×5 p2, ReLU, avgpool 2, conv 64@5×5 p2, ReLU,
    avgpool 2, conv 64@4×4, ReLU, conv 10@1×1, flatten.

    Shapes: ``(N, 3, 32, 32)`` → conv1 ``(N, 32, 32, 32)`` → pool1 ``(N, 32, 16, 16)`` → conv2
    ``(N, 32, 16, 16)`` → pool2 ``(N, 32, 8, 8)`` → conv3 ``(N, 64, 8, 8)`` → pool3 ``(N, 64, 4, 4)`` → conv4
    ``(N, 64, 1, 1)`` → conv5 ``(N, 10, 1, 1)`` → ``(N, 10)``. As in the authors' code, the first ReLU comes
    after the max pooling and the others before the average poolings.
    """
    return revnet.convert(nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 32, 5, padding=2)),
        ("pool1", nn.MaxPool2d(2, 2)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(32, 32, 5, padding=2)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.AvgPool2d(2, 2)),
        ("conv3", nn.Conv2d(32, 64, 5, padding=2)),
        ("relu3", nn.ReLU()),
        ("pool3", nn.AvgPool2d(2, 2)),
        ("conv4", nn.Conv2d(64, 64, 4)),
        ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(64, 10, 1)),
        ("flat", nn.Flatten()),
    ])))


def nin() -> revnet.Sequential:
    """Network in Network: three blocks of a convolution and two 1×1 ("cccp") convolutions, each with a ReLU.

    conv 192@5×5 p2, ReLU, cccp 160, ReLU, cccp 96, ReLU, maxpool 2, dropout 0.5; conv 192@5×5 p2, ReLU,
    cccp 192, ReLU, cccp 192, ReLU, avgpool 2, dropout 0.5; conv 192@3×3 p1, ReLU, cccp 192, ReLU, cccp 10,
    avgpool 8, flatten (no ReLU after the last 1×1 convolution).

    Shapes: ``(N, 3, 32, 32)`` → block 1 ``(N, 96, 32, 32)`` → pool1 ``(N, 96, 16, 16)`` → block 2
    ``(N, 192, 16, 16)`` → pool2 ``(N, 192, 8, 8)`` → block 3 ``(N, 10, 8, 8)`` → pool3 ``(N, 10, 1, 1)`` →
    ``(N, 10)``. The two Dropout layers draw their masks in ``trace`` (training mode) and reverse with the same
    masks; in eval mode they are the identity.
    """
    return revnet.convert(nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 192, 5, padding=2)),
        ("relu1", nn.ReLU()),
        ("cccp1", nn.Conv2d(192, 160, 1)),
        ("relu_cccp1", nn.ReLU()),
        ("cccp2", nn.Conv2d(160, 96, 1)),
        ("relu_cccp2", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2, 2)),
        ("drop1", nn.Dropout(0.5)),
        ("conv2", nn.Conv2d(96, 192, 5, padding=2)),
        ("relu2", nn.ReLU()),
        ("cccp3", nn.Conv2d(192, 192, 1)),
        ("relu_cccp3", nn.ReLU()),
        ("cccp4", nn.Conv2d(192, 192, 1)),
        ("relu_cccp4", nn.ReLU()),
        ("pool2", nn.AvgPool2d(2, 2)),
        ("drop2", nn.Dropout(0.5)),
        ("conv3", nn.Conv2d(192, 192, 3, padding=1)),
        ("relu3", nn.ReLU()),
        ("cccp5", nn.Conv2d(192, 192, 1)),
        ("relu_cccp5", nn.ReLU()),
        ("cccp6", nn.Conv2d(192, 10, 1)),
        ("pool3", nn.AvgPool2d(8)),
        ("flat", nn.Flatten()),
    ])))
