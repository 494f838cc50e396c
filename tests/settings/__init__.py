"""Per-layer test cases as data (in the style of BackPACK's ``test/core/derivatives/*_settings.py``).

Each family module (``linear``, ``conv``, ``activation``, ``pooling``, ``norm``, ``shape_dropout``) exports
``SETTINGS``, a list of plain dicts with the keys

* ``id`` (str): readable prefix of the pytest id, e.g. ``"conv2d-k3-s2-p1-g2"``; :func:`load` appends the
  input shape (and ``-train`` / ``-ties``), giving ``conv2d-k3-s2-p1-g2-in(2,4,9,7)``;
* ``make_layer`` (callable): returns a fresh revnet layer; it runs under ``torch.manual_seed(seed)``;
* ``input_shape`` (tuple of int): ``(N, *s)``;
* ``seed`` (int): seeds the layer's initialisation and the input;
* ``train`` (bool, default ``False``): trace in training mode (BatchNorm, Dropout);
* ``values`` (default ``"randn"``): ``"randn"`` for standard normal inputs, ``"ties"`` for inputs drawn
  from {-1, 0, 1} (ties in max pooling, exact zeros at activation kinks), or an explicit tuple of
  ``prod(input_shape)`` floats (the hypothesis strategies draw those).

:func:`load` fills in the defaults and rejects unknown or missing keys; ``ALL_CASES`` joins the families.
:meth:`Case.build` returns the layer and its input in float64 (set here, not by a global default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

import revnet

REQUIRED = ("id", "make_layer", "input_shape", "seed")
DEFAULTS: dict[str, Any] = {"train": False, "values": "randn"}
DTYPE = torch.float64


@dataclass(frozen=True)
class Case:
    """One test case: a layer factory and the input it is traced on (see the module docstring)."""

    id: str
    make_layer: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    seed: int
    train: bool = False
    values: Union[str, tuple[float, ...]] = "randn"

    def build(self) -> tuple[nn.Module, Tensor]:
        """The layer (float64, in train or eval mode as the case says) and its input ``x`` (float64)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            layer = self.make_layer()
        layer = layer.to(DTYPE).train(self.train)
        return layer, self.input()

    def input(self) -> Tensor:
        gen = self.generator()
        if self.values == "randn":
            return torch.randn(self.input_shape, generator=gen, dtype=DTYPE)
        if self.values == "ties":
            return torch.randint(-1, 2, self.input_shape, generator=gen).to(DTYPE)
        return torch.tensor(self.values, dtype=DTYPE).reshape(self.input_shape)

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator for this case; ``stream`` 0 draws the input, others the cotangents and weights."""
        return torch.Generator().manual_seed(self.seed * 1009 + stream)

    def context(self, layer: nn.Module) -> str:
        """What a mismatch report starts with: id, layer repr, input shape, seed, mode."""
        mode = "train" if self.train else "eval"
        return f"[{self.id}] {layer!r}, input {self.input_shape}, seed {self.seed}, {mode} mode, values {self.values_kind}"

    @property
    def values_kind(self) -> str:
        return self.values if isinstance(self.values, str) else "explicit"


def make_id(prefix: str, input_shape: tuple[int, ...], train: bool, values: Any) -> str:
    parts = [prefix, f"in({','.join(str(s) for s in input_shape)})"]
    if train:
        parts.append("train")
    if values == "ties":
        parts.append("ties")
    elif not isinstance(values, str):
        parts.append("values")
    return "-".join(parts)


def load_one(setting: dict[str, Any]) -> Case:
    """Check one settings dict, fill in the defaults and build its :class:`Case` (with the full id)."""
    unknown = set(setting) - set(REQUIRED) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings keys {sorted(unknown)} in {setting!r}; allowed: {[*REQUIRED, *DEFAULTS]}")
    missing = [key for key in REQUIRED if key not in setting]
    if missing:
        raise ValueError(f"missing settings keys {missing} in {setting!r}")
    full = {**DEFAULTS, **setting}
    if not callable(full["make_layer"]):
        raise ValueError(f"make_layer must be callable, got {full['make_layer']!r}")
    shape = tuple(int(s) for s in full["input_shape"])
    values = full["values"]
    if isinstance(values, str):
        if values not in ("randn", "ties"):
            raise ValueError(f"values must be 'randn', 'ties' or a tuple of floats, got {values!r}")
    else:
        values = tuple(float(v) for v in values)
        if len(values) != math.prod(shape):
            raise ValueError(f"{len(values)} explicit values for input shape {shape}")
    return Case(
        id=make_id(full["id"], shape, bool(full["train"]), values),
        make_layer=full["make_layer"],
        input_shape=shape,
        seed=int(full["seed"]),
        train=bool(full["train"]),
        values=values,
    )


def load(settings: list[dict[str, Any]]) -> list[Case]:
    """:func:`load_one` for every dict; ids must be unique."""
    cases = [load_one(setting) for setting in settings]
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates}")
    return cases


def randomized(layer: nn.Module) -> nn.Module:
    """Draw PReLU slopes and BatchNorm statistics/affine parameters from the (seeded) global RNG.

    Their constant defaults (slope 0.25, μ = 0, σ² = 1, γ = 1, β = 0) would hide a broadcasting or a
    scaling bug. The running variances are drawn positive, from [0.25, 2.25).
    """
    with torch.no_grad():
        if isinstance(layer, nn.PReLU):
            layer.weight.normal_()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            if layer.track_running_stats:
                layer.running_mean.normal_()
                layer.running_var.uniform_(0.25, 2.25)
            if layer.affine:
                layer.weight.normal_()
                layer.bias.normal_()
    return layer


class Make:
    """A printable layer factory: ``Make(revnet.Conv2d, 2, 4, 3, stride=2)()`` builds the layer in float64,
    and the ``repr`` is the call (so a hypothesis failure can be pasted into an ``@example``).

    The layer goes through :func:`randomized`; ``state`` then sets parameters/buffers by name to explicit
    values (hypothesis draws BatchNorm statistics and PReLU slopes that way).
    """

    def __init__(self, cls: type, *args: Any, state: Union[dict[str, tuple[float, ...]], None] = None, **kwargs: Any):
        self.cls, self.args, self.kwargs, self.state = cls, args, kwargs, dict(state or {})

    def __call__(self) -> nn.Module:
        layer = randomized(self.cls(*self.args, **self.kwargs).to(DTYPE))
        tensors = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
        with torch.no_grad():
            for name, values in self.state.items():
                tensors[name].copy_(torch.tensor(values, dtype=DTYPE).reshape(tensors[name].shape))
        return layer

    def torch_module(self) -> nn.Module:
        """The plain ``torch.nn`` counterpart with the same constructor arguments (no state)."""
        return revnet.TORCH_COUNTERPARTS[self.cls](*self.args, **self.kwargs)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if self.state:
            parts.append(f"state={self.state!r}")
        return f"Make(revnet.{self.cls.__name__}, {', '.join(parts)})"


# The family modules use the helpers above, so they are imported last.
from . import activation, conv, linear, modern, norm, pooling, shape_dropout  # noqa: E402

FAMILIES = {
    "linear": linear.SETTINGS,
    "conv": conv.SETTINGS,
    "activation": activation.SETTINGS,
    "pooling": pooling.SETTINGS,
    "norm": norm.SETTINGS,
    "shape_dropout": shape_dropout.SETTINGS,
    "modern": modern.SETTINGS,
}
ALL_CASES: list[Case] = load([setting for family in FAMILIES.values() for setting in family])
