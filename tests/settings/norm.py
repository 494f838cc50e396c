"""BatchNorm1d ((N, C) and (N, C, L)) and BatchNorm2d with random running statistics and affine parameters.

Eval mode: the reverse is checked against autograd. Train mode: the forward and the running-statistics update
are checked against torch, and the reverse must raise BatchNormTrainingError.
"""

import revnet

from . import randomized

SETTINGS = [
    {"id": "batchnorm1d-c4", "make_layer": lambda: randomized(revnet.BatchNorm1d(4)), "input_shape": (3, 4), "seed": 0},
    {"id": "batchnorm1d-c3", "make_layer": lambda: randomized(revnet.BatchNorm1d(3)), "input_shape": (2, 3, 5), "seed": 1},
    {
        "id": "batchnorm1d-c4-noaffine",
        "make_layer": lambda: randomized(revnet.BatchNorm1d(4, affine=False)),
        "input_shape": (3, 4),
        "seed": 2,
    },
    {
        "id": "batchnorm1d-c3-eps0.1",
        "make_layer": lambda: randomized(revnet.BatchNorm1d(3, eps=0.1)),
        "input_shape": (2, 3, 4),
        "seed": 3,
    },
    {
        "id": "batchnorm1d-c4",
        "make_layer": lambda: randomized(revnet.BatchNorm1d(4)),
        "input_shape": (3, 4),
        "seed": 4,
        "train": True,
    },
    {
        "id": "batchnorm1d-c3",
        "make_layer": lambda: randomized(revnet.BatchNorm1d(3, momentum=0.5)),
        "input_shape": (2, 3, 5),
        "seed": 5,
        "train": True,
    },
    {"id": "batchnorm2d-c3", "make_layer": lambda: randomized(revnet.BatchNorm2d(3)), "input_shape": (2, 3, 4, 4), "seed": 6},
    {
        "id": "batchnorm2d-c2-noaffine",
        "make_layer": lambda: randomized(revnet.BatchNorm2d(2, affine=False)),
        "input_shape": (2, 2, 3, 5),
        "seed": 7,
    },
    {
        "id": "batchnorm2d-c4-eps1e-3",
        "make_layer": lambda: randomized(revnet.BatchNorm2d(4, eps=1e-3)),
        "input_shape": (1, 4, 3, 3),
        "seed": 8,
    },
    {
        "id": "batchnorm2d-c3",
        "make_layer": lambda: randomized(revnet.BatchNorm2d(3)),
        "input_shape": (2, 3, 4, 4),
        "seed": 9,
        "train": True,
    },
    {
        "id": "batchnorm2d-c2-momentumNone",  # cumulative average: uses num_batches_tracked
        "make_layer": lambda: randomized(revnet.BatchNorm2d(2, momentum=None)),
        "input_shape": (3, 2, 2, 3),
        "seed": 10,
        "train": True,
    },
]
