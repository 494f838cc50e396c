"""MNIST architectures of the Deep Defense paper, as fresh ``revnet.Sequential`` networks.

Both take ``(N, 1, 28, 28)`` inputs that are already preprocessed (x/255 minus the per-pixel training mean;
the preprocessing lives in the checkpoint, not in the network) and return ``(N, 10)`` logits.
"""

from __future__ import annotations

import revnet


def mlp() -> revnet.Sequential:
    """784-500-150-10 with ReLU."""
    return revnet.Sequential(
        revnet.Flatten(),
        revnet.Linear(784, 500),
        revnet.ReLU(),
        revnet.Linear(500, 150),
        revnet.ReLU(),
        revnet.Linear(150, 10),
    )


def lenet() -> revnet.Sequential:
    """conv 20@5×5, maxpool 2, conv 50@5×5, maxpool 2, fc 500, ReLU, fc 10.

    As in the DeepFool authors' LeNet, there is no ReLU after the convolutions. Child names: ``0`` conv1,
    ``2`` conv2, ``5`` fc1, ``7`` fc2 (the names the layer-wise study uses).
    """
    return revnet.Sequential(
        revnet.Conv2d(1, 20, 5),
        revnet.MaxPool2d(2),
        revnet.Conv2d(20, 50, 5),
        revnet.MaxPool2d(2),
        revnet.Flatten(),
        revnet.Linear(50 * 4 * 4, 500),
        revnet.ReLU(),
        revnet.Linear(500, 10),
    )
