"""LayerNorm and GroupNorm (affine parameters random, several normalised shapes), Hardswish and Hardsigmoid
(random inputs and ties, which put exact zeros but not the kinks at ±3), StochasticDepth in eval mode (identity)
and in training mode (a drawn per-sample or per-batch mask)."""

import torchvision

import revnet

from . import randomized

SETTINGS = [
    {"id": "layernorm-c5", "make_layer": lambda: randomized(revnet.LayerNorm(5)), "input_shape": (3, 5), "seed": 0},
    {"id": "layernorm-l3c4", "make_layer": lambda: randomized(revnet.LayerNorm((3, 4))), "input_shape": (2, 3, 4),
     "seed": 1},
    {"id": "layernorm-noaffine", "make_layer": lambda: revnet.LayerNorm(4, elementwise_affine=False),
     "input_shape": (2, 3, 4), "seed": 2},
    {"id": "layernorm-nobias", "make_layer": lambda: randomized(revnet.LayerNorm(4, bias=False, eps=0.1)),
     "input_shape": (2, 2, 4), "seed": 3},
    {"id": "groupnorm-g2c4", "make_layer": lambda: randomized(revnet.GroupNorm(2, 4)), "input_shape": (2, 4, 3, 3),
     "seed": 4},
    {"id": "groupnorm-g1c3", "make_layer": lambda: randomized(revnet.GroupNorm(1, 3)), "input_shape": (2, 3, 5),
     "seed": 5},
    {"id": "groupnorm-g3c3-noaffine", "make_layer": lambda: revnet.GroupNorm(3, 3, affine=False),
     "input_shape": (3, 3, 2, 2), "seed": 6},
    {"id": "hardswish", "make_layer": lambda: revnet.Hardswish(), "input_shape": (3, 4, 5), "seed": 7},
    {"id": "hardswish-inplace", "make_layer": lambda: revnet.Hardswish(inplace=True), "input_shape": (2, 6),
     "seed": 8, "values": "ties"},
    {"id": "hardsigmoid", "make_layer": lambda: revnet.Hardsigmoid(), "input_shape": (2, 3, 4, 4), "seed": 9},
    {"id": "hardsigmoid", "make_layer": lambda: revnet.Hardsigmoid(), "input_shape": (3, 5), "seed": 10,
     "values": "ties"},
    {"id": "stochasticdepth-row", "make_layer": lambda: revnet.StochasticDepth(0.3, "row"),
     "input_shape": (4, 3, 2, 2), "seed": 11},
    {"id": "softmax-dim1", "make_layer": lambda: revnet.Softmax(dim=1), "input_shape": (3, 5), "seed": 14},
    {"id": "softmax-dim-1", "make_layer": lambda: revnet.Softmax(dim=-1), "input_shape": (2, 3, 4), "seed": 15},
    {"id": "logsoftmax-dim2", "make_layer": lambda: revnet.LogSoftmax(dim=2), "input_shape": (2, 3, 4), "seed": 16},
    {"id": "stochasticdepth-row", "make_layer": lambda: revnet.StochasticDepth(0.3, "row"),
     "input_shape": (4, 3, 2, 2), "seed": 12, "train": True},
    {"id": "stochasticdepth-batch", "make_layer": lambda: revnet.StochasticDepth(0.5, "batch"),
     "input_shape": (3, 5), "seed": 13, "train": True},
]

assert torchvision  # StochasticDepth subclasses torchvision.ops.StochasticDepth
