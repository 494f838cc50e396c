"""Exception types raised by revnet, one per kind of misuse.

Every message says what went wrong *and* what to do about it. All of them derive from
:class:`RevnetError`, so ``except revnet.RevnetError`` catches any of them.
"""


class RevnetError(Exception):
    """Base class of every error revnet raises on purpose."""


class UnsupportedLayerError(RevnetError, NotImplementedError):
    """A module (or a module option) has no hand-written reverse.

    Raised when converting a ``torch.nn`` module that is not in the registry, and by a layer's
    constructor for options whose reverse is not implemented (e.g. ``padding_mode="reflect"``).
    Fix: use a supported layer/option, or add one with :func:`revnet.register`.
    """


class TapeMismatchError(RevnetError, ValueError):
    """A tape was handed to a network (or layer) that did not record it."""


class ReverseShapeError(RevnetError, ValueError):
    """The cotangent ``v`` does not have the shape of the output the tape recorded."""


class BatchNormTrainingError(RevnetError, RuntimeError):
    """A BatchNorm layer traced in training mode was asked to reverse.

    In training mode BatchNorm normalises with batch statistics, so its Jacobian is not the
    per-channel scale the reverse implements. Fix: freeze the statistics with ``net.eval()``.
    """


class InputMismatchError(RevnetError, ValueError):
    """The input does not fit a layer of the network (channels, feature size, rank or dtype).

    Raised by ``trace`` with the layer's name and the shape it got, instead of torch's raw error.
    """
