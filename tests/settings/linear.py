"""Linear: plain, no bias, extra middle dimensions (x of shape (N, *, D_in)), size-1 corner."""

import revnet

SETTINGS = [
    {"id": "linear-5-3", "make_layer": lambda: revnet.Linear(5, 3), "input_shape": (3, 5), "seed": 0},
    {"id": "linear-4-6-nobias", "make_layer": lambda: revnet.Linear(4, 6, bias=False), "input_shape": (2, 4), "seed": 1},
    {"id": "linear-4-3-mid(3)", "make_layer": lambda: revnet.Linear(4, 3), "input_shape": (2, 3, 4), "seed": 2},
    {"id": "linear-3-2-mid(2,3)", "make_layer": lambda: revnet.Linear(3, 2), "input_shape": (2, 2, 3, 3), "seed": 3},
    {"id": "linear-1-1", "make_layer": lambda: revnet.Linear(1, 1), "input_shape": (1, 1), "seed": 4},
    {"id": "linear-6-1", "make_layer": lambda: revnet.Linear(6, 1), "input_shape": (3, 6), "seed": 5},
]
