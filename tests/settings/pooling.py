"""MaxPool2d (overlapping windows, padding, dilation, ceil_mode, ties), AvgPool2d (padding, ceil_mode,
count_include_pad, divisor_override, gaps), AdaptiveAvgPool2d (sizes that do not divide, None, upsampling)."""

import revnet

SETTINGS = [
    # MaxPool2d
    {"id": "maxpool2d-k2-s2", "make_layer": lambda: revnet.MaxPool2d(2), "input_shape": (2, 3, 6, 6), "seed": 0},
    {
        "id": "maxpool2d-k3-s1-p1",  # overlapping windows: contributions add up
        "make_layer": lambda: revnet.MaxPool2d(3, stride=1, padding=1),
        "input_shape": (2, 2, 5, 5),
        "seed": 1,
    },
    {
        "id": "maxpool2d-k3-s2-p1-ceil",
        "make_layer": lambda: revnet.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        "input_shape": (2, 2, 6, 7),
        "seed": 2,
    },
    {
        "id": "maxpool2d-k(3,2)-s(2,1)-d(2,1)",
        "make_layer": lambda: revnet.MaxPool2d((3, 2), stride=(2, 1), dilation=(2, 1)),
        "input_shape": (1, 3, 8, 5),
        "seed": 3,
    },
    {
        "id": "maxpool2d-k4-s3-p2-ceil",
        "make_layer": lambda: revnet.MaxPool2d(4, stride=3, padding=2, ceil_mode=True),
        "input_shape": (1, 2, 9, 10),
        "seed": 4,
    },
    {
        "id": "maxpool2d-k2-s1",
        "make_layer": lambda: revnet.MaxPool2d(2, stride=1),
        "input_shape": (2, 2, 5, 5),
        "seed": 5,
        "values": "ties",
    },
    {
        "id": "maxpool2d-k3-s1-p1",
        "make_layer": lambda: revnet.MaxPool2d(3, stride=1, padding=1),
        "input_shape": (1, 3, 4, 4),
        "seed": 6,
        "values": "ties",
    },
    {
        "id": "maxpool2d-k2-s2-ceil",
        "make_layer": lambda: revnet.MaxPool2d(2, ceil_mode=True),
        "input_shape": (2, 2, 5, 5),
        "seed": 7,
        "values": "ties",
    },
    {
        "id": "maxpool2d-k3-s1-p1-d2",
        "make_layer": lambda: revnet.MaxPool2d(3, stride=1, padding=1, dilation=2),
        "input_shape": (1, 2, 7, 7),
        "seed": 8,
        "values": "ties",
    },
    # AvgPool2d
    {"id": "avgpool2d-k2", "make_layer": lambda: revnet.AvgPool2d(2), "input_shape": (2, 3, 6, 6), "seed": 10},
    {
        "id": "avgpool2d-k3-s2-p1",
        "make_layer": lambda: revnet.AvgPool2d(3, stride=2, padding=1),
        "input_shape": (2, 2, 7, 6),
        "seed": 11,
    },
    {
        "id": "avgpool2d-k3-s2-p1-nopad",
        "make_layer": lambda: revnet.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        "input_shape": (2, 2, 7, 6),
        "seed": 12,
    },
    {
        "id": "avgpool2d-k3-s2-p1-ceil-nopad",
        "make_layer": lambda: revnet.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        "input_shape": (2, 2, 6, 6),
        "seed": 13,
    },
    {
        "id": "avgpool2d-k3-s2-p1-ceil",  # the last window sticks out past the padding: a smaller divisor
        "make_layer": lambda: revnet.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
        "input_shape": (2, 2, 6, 8),
        "seed": 14,
    },
    {
        "id": "avgpool2d-k(3,2)-s(1,2)-p(1,0)-div5",
        "make_layer": lambda: revnet.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0), divisor_override=5),
        "input_shape": (2, 2, 5, 7),
        "seed": 15,
    },
    {
        "id": "avgpool2d-k2-s3",  # stride > kernel: gaps between windows
        "make_layer": lambda: revnet.AvgPool2d(2, stride=3),
        "input_shape": (1, 2, 8, 8),
        "seed": 16,
    },
    # AdaptiveAvgPool2d
    {
        "id": "adaptiveavgpool2d-o3",  # 7 -> 3 and 5 -> 3: windows overlap, sizes do not divide
        "make_layer": lambda: revnet.AdaptiveAvgPool2d(3),
        "input_shape": (2, 3, 7, 5),
        "seed": 20,
    },
    {
        "id": "adaptiveavgpool2d-o(None,2)",
        "make_layer": lambda: revnet.AdaptiveAvgPool2d((None, 2)),
        "input_shape": (2, 2, 5, 7),
        "seed": 21,
    },
    {
        "id": "adaptiveavgpool2d-o(2,None)",
        "make_layer": lambda: revnet.AdaptiveAvgPool2d((2, None)),
        "input_shape": (1, 2, 5, 3),
        "seed": 22,
    },
    {
        "id": "adaptiveavgpool2d-o1",  # global average pooling
        "make_layer": lambda: revnet.AdaptiveAvgPool2d(1),
        "input_shape": (2, 4, 6, 6),
        "seed": 23,
    },
    {
        "id": "adaptiveavgpool2d-o(4,5)",
        "make_layer": lambda: revnet.AdaptiveAvgPool2d((4, 5)),
        "input_shape": (2, 2, 5, 7),
        "seed": 24,
    },
    {
        "id": "adaptiveavgpool2d-o(5,6)",  # output larger than input: inputs repeat
        "make_layer": lambda: revnet.AdaptiveAvgPool2d((5, 6)),
        "input_shape": (1, 2, 3, 4),
        "seed": 25,
    },
]
