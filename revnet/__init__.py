"""revnet: explicit reverse networks for PyTorch models (Deep Defense, Yan, Guo & Zhang, NeurIPS 2018).

Every supported layer has a hand-written reverse that shares its weights, so a network's input gradients
``vᵀ·∂y/∂x`` are computed by an ordinary differentiable network of their own (no ``torch.autograd.grad``)::

    net = revnet.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    y, tape = net.trace(x)                                  # x (N, 784) -> y (N, 10)
    eye = torch.eye(10).expand(len(x), 10, 10)              # one cotangent per class
    grads = net.reverse(eye, tape)                          # (N, 10, 784): ∂y_k/∂x for every class k
"""

from . import attacks, baselines, errors, layers, losses, metrics
from .attacks import DeepFoolInfo, deepfool, fgs_perturb, pgd_l2
from .errors import (
    BatchNormTrainingError,
    ReverseShapeError,
    RevnetError,
    TapeMismatchError,
    UnsupportedLayerError,
)
from .layers import (
    TORCH_COUNTERPARTS,
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    MaxPool2d,
    PReLU,
    ReLU,
    Reversible,
    Unflatten,
    is_reversible,
)
from .losses import DeepDefenseInfo, deep_defense_loss
from .registry import convert, register, supported
from .sequential import Reversed, ReverseLayer, Sequential, SequentialTape

__version__ = "0.1.0"

__all__ = [
    "DeepDefenseInfo",
    "DeepFoolInfo",
    "attacks",
    "baselines",
    "deep_defense_loss",
    "deepfool",
    "fgs_perturb",
    "pgd_l2",
    "losses",
    "metrics",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNormTrainingError",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Identity",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "PReLU",
    "ReLU",
    "ReverseLayer",
    "ReverseShapeError",
    "Reversed",
    "Reversible",
    "RevnetError",
    "Sequential",
    "SequentialTape",
    "TORCH_COUNTERPARTS",
    "TapeMismatchError",
    "Unflatten",
    "UnsupportedLayerError",
    "convert",
    "errors",
    "is_reversible",
    "layers",
    "register",
    "supported",
]
