"""revnet's layers: each is a ``torch.nn`` layer plus ``trace`` (forward + tape) and ``reverse`` (VJP).

``TORCH_COUNTERPARTS`` maps every revnet layer to the ``torch.nn`` class it subclasses; the conversion
registry (:mod:`revnet.registry`) is built from it, and the tests check every entry against autograd.
"""

from torch import nn

from .activation import LeakyReLU, PReLU, ReLU
from .conv import Conv2d
from .dropout import Dropout
from .linear import Linear
from .norm import BatchNorm1d, BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .protocol import Reversible, is_reversible
from .shape import Flatten, Identity, Unflatten

TORCH_COUNTERPARTS: dict[type, type[nn.Module]] = {
    Linear: nn.Linear,
    Conv2d: nn.Conv2d,
    ReLU: nn.ReLU,
    LeakyReLU: nn.LeakyReLU,
    PReLU: nn.PReLU,
    MaxPool2d: nn.MaxPool2d,
    AvgPool2d: nn.AvgPool2d,
    AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
    BatchNorm1d: nn.BatchNorm1d,
    BatchNorm2d: nn.BatchNorm2d,
    Flatten: nn.Flatten,
    Unflatten: nn.Unflatten,
    Dropout: nn.Dropout,
    Identity: nn.Identity,
}

__all__ = [cls.__name__ for cls in TORCH_COUNTERPARTS] + ["TORCH_COUNTERPARTS", "Reversible", "is_reversible"]
