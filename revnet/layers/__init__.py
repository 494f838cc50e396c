"""revnet's layers: each is a ``torch.nn`` layer plus ``trace`` (forward + tape) and ``reverse`` (VJP).

``TORCH_COUNTERPARTS`` maps every revnet layer to the ``torch.nn`` class it subclasses; ``FUNCTION_RULES`` and
``METHOD_RULES`` map the functions and tensor methods of traced models to their reverse rules. The conversion
registry (:mod:`revnet.registry`) is built from these tables, and the tests check every entry against autograd.
"""

from torch import nn

from .activation import Hardtanh, LeakyReLU, PReLU, ReLU, ReLU6
from .attention import ATTENTION_COUNTERPARTS, ATTENTION_METHOD_RULES, ATTENTION_RULES, LogSoftmax, MultiheadAttention, Softmax
from .conv import CONV_RULES, Conv2d
from .dropout import DROPOUT_RULES, Dropout
from .droppath import DROPPATH_COUNTERPARTS, DROPPATH_RULES, StochasticDepth
from .functional import LAYER_METHOD_RULES, LAYER_RULES, REDUCE_RULES, RESHAPE_METHOD_RULES, RESHAPE_RULES
from .hard import HARD_COUNTERPARTS, HARD_METHOD_RULES, HARD_RULES, Hardsigmoid, Hardswish
from .layernorm import NORM_COUNTERPARTS, NORM_METHOD_RULES, NORM_RULES, GroupNorm, LayerNorm
from .layout import LAYOUT_METHOD_RULES, LAYOUT_RULES
from .linear import LINEAR_RULES, Linear
from .timm_functions import TIMM_RULES, VALUE_FREE_FUNCTIONS
from .merge import MERGE_METHOD_RULES, MERGE_RULES
from .norm import BatchNorm1d, BatchNorm2d
from .normalize import NORMALIZE_RULES
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .protocol import Reversible, is_reversible
from .shape import Flatten, Identity, Unflatten
from .smooth import ELU, GELU, Sigmoid, SiLU, Softplus, Tanh

TORCH_COUNTERPARTS: dict[type, type[nn.Module]] = {
    Linear: nn.Linear,
    Conv2d: nn.Conv2d,
    ReLU: nn.ReLU,
    LeakyReLU: nn.LeakyReLU,
    PReLU: nn.PReLU,
    Hardtanh: nn.Hardtanh,
    ReLU6: nn.ReLU6,
    Sigmoid: nn.Sigmoid,
    Tanh: nn.Tanh,
    GELU: nn.GELU,
    SiLU: nn.SiLU,
    ELU: nn.ELU,
    Softplus: nn.Softplus,
    MaxPool2d: nn.MaxPool2d,
    AvgPool2d: nn.AvgPool2d,
    AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
    BatchNorm1d: nn.BatchNorm1d,
    BatchNorm2d: nn.BatchNorm2d,
    Flatten: nn.Flatten,
    Unflatten: nn.Unflatten,
    Dropout: nn.Dropout,
    Identity: nn.Identity,
    **NORM_COUNTERPARTS,
    **HARD_COUNTERPARTS,
    **DROPPATH_COUNTERPARTS,
    **ATTENTION_COUNTERPARTS,
}

# fx function nodes (by the function object) and method nodes (by name) -> reverse rule
FUNCTION_RULES: dict = {**LAYER_RULES, **RESHAPE_RULES, **REDUCE_RULES, **MERGE_RULES, **LAYOUT_RULES, **NORM_RULES,
                        **HARD_RULES, **DROPPATH_RULES, **ATTENTION_RULES, **LINEAR_RULES,
                        **TIMM_RULES, **DROPOUT_RULES, **NORMALIZE_RULES, **CONV_RULES}
METHOD_RULES: dict = {**LAYER_METHOD_RULES, **RESHAPE_METHOD_RULES, **MERGE_METHOD_RULES, **LAYOUT_METHOD_RULES,
                      **NORM_METHOD_RULES, **HARD_METHOD_RULES, **ATTENTION_METHOD_RULES}

__all__ = [cls.__name__ for cls in TORCH_COUNTERPARTS] + [
    "FUNCTION_RULES", "METHOD_RULES", "TORCH_COUNTERPARTS", "VALUE_FREE_FUNCTIONS", "Reversible", "is_reversible"]
