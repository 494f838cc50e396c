"""Conv2d: strides that drop rows/columns (output_padding != 0), padding incl. "same" (odd and even receptive
fields, i.e. symmetric and asymmetric) and "valid", dilation, groups (incl. depthwise), no bias, non-square."""

import revnet

SETTINGS = [
    {"id": "conv2d-k3", "make_layer": lambda: revnet.Conv2d(3, 2, 3), "input_shape": (2, 3, 6, 6), "seed": 0},
    {
        "id": "conv2d-k3-s2-p1-g2",
        "make_layer": lambda: revnet.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        "input_shape": (2, 4, 9, 7),
        "seed": 1,
    },
    {
        "id": "conv2d-k3-s2-nobias",  # (8 - 3) % 2 = 1: output_padding 1 in both dims
        "make_layer": lambda: revnet.Conv2d(3, 4, 3, stride=2, bias=False),
        "input_shape": (2, 3, 8, 8),
        "seed": 2,
    },
    {
        "id": "conv2d-k(2,3)-s(2,1)-p(1,0)-d(1,2)",
        "make_layer": lambda: revnet.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        "input_shape": (2, 2, 7, 8),
        "seed": 3,
    },
    {
        "id": "conv2d-k3-d2-same",  # odd receptive field: symmetric padding 2
        "make_layer": lambda: revnet.Conv2d(3, 2, 3, dilation=2, padding="same"),
        "input_shape": (2, 3, 7, 6),
        "seed": 4,
    },
    {
        "id": "conv2d-k2-same",  # even receptive field: torch pads (0, 1), asymmetric
        "make_layer": lambda: revnet.Conv2d(2, 2, 2, padding="same"),
        "input_shape": (1, 2, 5, 6),
        "seed": 5,
    },
    {
        "id": "conv2d-k(4,3)-same",  # asymmetric in H (1, 2), symmetric in W (1, 1)
        "make_layer": lambda: revnet.Conv2d(2, 3, (4, 3), padding="same"),
        "input_shape": (2, 2, 6, 5),
        "seed": 6,
    },
    {
        "id": "conv2d-k3-valid",
        "make_layer": lambda: revnet.Conv2d(2, 3, 3, padding="valid"),
        "input_shape": (2, 2, 5, 7),
        "seed": 7,
    },
    {
        "id": "conv2d-k1-s3",  # stride > kernel: some inputs never reach the output
        "make_layer": lambda: revnet.Conv2d(3, 2, 1, stride=3),
        "input_shape": (2, 3, 8, 7),
        "seed": 8,
    },
    {
        "id": "conv2d-k3-g4-depthwise",
        "make_layer": lambda: revnet.Conv2d(4, 4, 3, padding=1, groups=4),
        "input_shape": (2, 4, 5, 5),
        "seed": 9,
    },
    {
        "id": "conv2d-k5-s3-p2",
        "make_layer": lambda: revnet.Conv2d(1, 2, 5, stride=3, padding=2),
        "input_shape": (1, 1, 12, 11),
        "seed": 10,
    },
    {
        "id": "conv2d-k3-p3",  # padding larger than kernel // 2: the output is bigger than the input
        "make_layer": lambda: revnet.Conv2d(2, 2, 3, padding=3),
        "input_shape": (2, 2, 3, 4),
        "seed": 11,
    },
]
