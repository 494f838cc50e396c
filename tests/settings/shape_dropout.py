"""Flatten, Unflatten (positive and negative dims, -1 sizes), Identity, Dropout (eval: identity; train: the
traced mask, p = 0 and p = 1 included)."""

import revnet

SETTINGS = [
    {"id": "flatten", "make_layer": lambda: revnet.Flatten(), "input_shape": (2, 3, 4, 4), "seed": 0},
    {"id": "flatten-s2", "make_layer": lambda: revnet.Flatten(2), "input_shape": (2, 3, 4, 4), "seed": 1},
    {"id": "flatten-s1-e2", "make_layer": lambda: revnet.Flatten(1, 2), "input_shape": (2, 3, 4, 5), "seed": 2},
    {"id": "flatten-s-3-e-2", "make_layer": lambda: revnet.Flatten(-3, -2), "input_shape": (2, 3, 2, 4), "seed": 3},
    {"id": "flatten", "make_layer": lambda: revnet.Flatten(), "input_shape": (3, 5), "seed": 4},  # nothing to flatten
    {"id": "unflatten-d1-(3,4)", "make_layer": lambda: revnet.Unflatten(1, (3, 4)), "input_shape": (2, 12), "seed": 5},
    {"id": "unflatten-d-1-(2,2)", "make_layer": lambda: revnet.Unflatten(-1, (2, 2)), "input_shape": (2, 3, 4), "seed": 6},
    {"id": "unflatten-d2-(2,-1)", "make_layer": lambda: revnet.Unflatten(2, (2, -1)), "input_shape": (2, 3, 6, 2), "seed": 7},
    {"id": "identity", "make_layer": lambda: revnet.Identity(), "input_shape": (2, 3, 4), "seed": 8},
    {"id": "identity", "make_layer": lambda: revnet.Identity(), "input_shape": (3, 5), "seed": 9},
    {"id": "dropout-0.5", "make_layer": lambda: revnet.Dropout(0.5), "input_shape": (2, 3, 4, 4), "seed": 10},
    {"id": "dropout-0.5", "make_layer": lambda: revnet.Dropout(0.5), "input_shape": (2, 3, 4, 4), "seed": 11, "train": True},
    {"id": "dropout-0.2", "make_layer": lambda: revnet.Dropout(0.2), "input_shape": (3, 6), "seed": 12, "train": True},
    {"id": "dropout-0.9", "make_layer": lambda: revnet.Dropout(0.9), "input_shape": (2, 3, 4), "seed": 13, "train": True},
    {"id": "dropout-0.0", "make_layer": lambda: revnet.Dropout(0.0), "input_shape": (2, 5), "seed": 14, "train": True},
    {"id": "dropout-1.0", "make_layer": lambda: revnet.Dropout(1.0), "input_shape": (2, 5), "seed": 15, "train": True},
]
