"""revnet: explicit reverse networks for PyTorch models (Deep Defense, Yan, Guo & Zhang, NeurIPS 2018).

Every supported layer has a hand-written reverse that shares its weights, so a network's input gradients
``vᵀ·∂y/∂x`` are computed by an ordinary differentiable network of their own (no ``torch.autograd.grad``)::

    net = revnet.convert(torchvision.models.resnet18(num_classes=10))   # or revnet.Sequential(...)
    y, tape = net.trace(x)                                  # x (N, 3, 32, 32) -> y (N, 10)
    eye = torch.eye(10).expand(len(x), 10, 10)              # one cotangent per class
    grads = net.reverse(eye, tape)                          # (N, 10, 3, 32, 32): ∂y_k/∂x for every class k
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
    ELU,
    GELU,
    BatchNorm1d,
    GroupNorm,
    Hardsigmoid,
    Hardswish,
    LayerNorm,
    LogSoftmax,
    MultiheadAttention,
    Softmax,
    StochasticDepth,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Hardtanh,
    Identity,
    LeakyReLU,
    Linear,
    MaxPool2d,
    PReLU,
    ReLU,
    ReLU6,
    Reversible,
    Sigmoid,
    SiLU,
    Softplus,
    Tanh,
    Unflatten,
    is_reversible,
)
from .losses import DeepDefenseInfo, deep_defense_loss
from .convert import convert
from .check import CheckReport, check
from .graph import Graph, GraphTape
from .layers.protocol import noise_of, select_noise
from .registry import register, register_function, supported, supported_functions
from .sequential import Reversed, ReverseLayer, Sequential, SequentialTape
from .trace_through import TraceThrough

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "check",
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
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "LayerNorm",
    "LogSoftmax",
    "Softmax",
    "MultiheadAttention",
    "StochasticDepth",
    "BatchNorm2d",
    "BatchNormTrainingError",
    "Conv2d",
    "Dropout",
    "ELU",
    "Flatten",
    "GELU",
    "Graph",
    "GraphTape",
    "Hardtanh",
    "Identity",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "PReLU",
    "ReLU",
    "ReLU6",
    "ReverseLayer",
    "ReverseShapeError",
    "Reversed",
    "Reversible",
    "RevnetError",
    "Sequential",
    "SequentialTape",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "TORCH_COUNTERPARTS",
    "TapeMismatchError",
    "Unflatten",
    "UnsupportedLayerError",
    "convert",
    "errors",
    "is_reversible",
    "layers",
    "noise_of",
    "register",
    "register_function",
    "TraceThrough",
    "select_noise",
    "supported",
    "supported_functions",
]
