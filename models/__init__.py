"""Model architectures built from revnet layers (MNIST: ``mlp``, ``lenet``) and their checkpoint format."""

from .checkpoint import ARCHITECTURES, CheckpointError, build, load, save, save_atomic
from .mnist import lenet, mlp

__all__ = ["ARCHITECTURES", "CheckpointError", "build", "lenet", "load", "mlp", "save", "save_atomic"]
