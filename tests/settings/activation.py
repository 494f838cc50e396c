"""ReLU, LeakyReLU, PReLU, Hardtanh, ReLU6 and the smooth activations: random inputs and inputs from {-1, 0, 1} (exact zeros at the kink, where the
strict mask ``x > 0`` must match autograd). PReLU slopes are random (one shared, or one per channel)."""

import revnet

from . import randomized

SETTINGS = [
    {"id": "relu", "make_layer": lambda: revnet.ReLU(), "input_shape": (3, 4), "seed": 0},
    {"id": "relu", "make_layer": lambda: revnet.ReLU(), "input_shape": (2, 3, 5, 5), "seed": 1},
    {"id": "relu", "make_layer": lambda: revnet.ReLU(), "input_shape": (2, 3, 4, 4), "seed": 2, "values": "ties"},
    {"id": "relu-inplace", "make_layer": lambda: revnet.ReLU(inplace=True), "input_shape": (2, 5), "seed": 3},
    {"id": "leakyrelu-0.01", "make_layer": lambda: revnet.LeakyReLU(), "input_shape": (3, 4), "seed": 4},
    {
        "id": "leakyrelu-0.2",
        "make_layer": lambda: revnet.LeakyReLU(0.2),
        "input_shape": (2, 3, 4, 4),
        "seed": 5,
        "values": "ties",
    },
    {"id": "leakyrelu--0.5", "make_layer": lambda: revnet.LeakyReLU(-0.5), "input_shape": (2, 6), "seed": 6},
    {"id": "leakyrelu-2.0", "make_layer": lambda: revnet.LeakyReLU(2.0), "input_shape": (2, 2, 3, 3), "seed": 7},
    {"id": "prelu-1", "make_layer": lambda: randomized(revnet.PReLU()), "input_shape": (2, 3, 4, 4), "seed": 8},
    {"id": "prelu-1", "make_layer": lambda: randomized(revnet.PReLU()), "input_shape": (3, 5), "seed": 9, "values": "ties"},
    {"id": "prelu-c3", "make_layer": lambda: randomized(revnet.PReLU(3)), "input_shape": (2, 3, 4, 4), "seed": 10},
    {
        "id": "prelu-c3",
        "make_layer": lambda: randomized(revnet.PReLU(3)),
        "input_shape": (2, 3, 5),
        "seed": 11,
        "values": "ties",
    },
    {"id": "prelu-c4", "make_layer": lambda: randomized(revnet.PReLU(4)), "input_shape": (3, 4), "seed": 12},
    {"id": "hardtanh", "make_layer": lambda: revnet.Hardtanh(), "input_shape": (2, 3, 4, 4), "seed": 13, "values": "ties"},
    {"id": "hardtanh-0-2", "make_layer": lambda: revnet.Hardtanh(0.0, 2.0, inplace=True), "input_shape": (3, 5),
     "seed": 14},
    {"id": "relu6", "make_layer": lambda: revnet.ReLU6(), "input_shape": (2, 6), "seed": 15, "values": "ties"},
    {"id": "sigmoid", "make_layer": lambda: revnet.Sigmoid(), "input_shape": (2, 3, 4), "seed": 16},
    {"id": "tanh", "make_layer": lambda: revnet.Tanh(), "input_shape": (3, 4), "seed": 17},
    {"id": "gelu", "make_layer": lambda: revnet.GELU(), "input_shape": (2, 3, 4, 4), "seed": 18},
    {"id": "gelu-tanh", "make_layer": lambda: revnet.GELU(approximate="tanh"), "input_shape": (3, 4), "seed": 19},
    {"id": "silu", "make_layer": lambda: revnet.SiLU(inplace=True), "input_shape": (2, 5), "seed": 20},
    {"id": "elu-0.5", "make_layer": lambda: revnet.ELU(0.5), "input_shape": (2, 3, 3), "seed": 21, "values": "ties"},
    {"id": "softplus-b2-t1", "make_layer": lambda: revnet.Softplus(2.0, 1.0), "input_shape": (3, 6), "seed": 22},
]
