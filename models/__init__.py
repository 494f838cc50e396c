"""Model architectures of the Deep Defense paper as reversible networks, and their checkpoint format.

* MNIST (:mod:`models.mnist`): ``mlp``, ``lenet`` — ``revnet.Sequential``, inputs ``(N, 1, 28, 28)``.
* CIFAR-10 (:mod:`models.cifar`): ``convnet``, ``nin`` — ``revnet.Sequential``, inputs ``(N, 3, 32, 32)``.
* ImageNet (:mod:`models.imagenet`): ``alexnet``, ``resnet18`` — torchvision's models converted to
  ``revnet.Graph``, inputs ``(N, 3, 224, 224)``, 1000 classes.

``ARCHITECTURES`` maps each name to its builder, ``INPUT_SHAPES`` to its per-sample input shape and
``NUM_CLASSES`` to its number of logits; ``build(arch)`` gives a fresh network, ``save``/``load`` the checkpoint.
``pretrained(name)`` loads the defended MNIST weights that ship with the package (``shipped_weights()`` names
them; :mod:`models.shipped`).
"""

from .checkpoint import (ARCH_ARGS, ARCHITECTURES, INPUT_SHAPES, NUM_CLASSES, CheckpointError, WriteError, build,
                         build_user_model, clean_stale_temp, input_shape_of, is_user_model, load, load_state, save,
                         save_atomic, write_atomic)
from .cifar import convnet, nin
from .imagenet import alexnet, resnet18
from .mnist import lenet, mlp
from .shipped import available as shipped_weights, pretrained

__all__ = [
    "ARCH_ARGS",
    "ARCHITECTURES",
    "CheckpointError",
    "INPUT_SHAPES",
    "NUM_CLASSES",
    "alexnet",
    "WriteError",
    "build",
    "pretrained",
    "shipped_weights",
    "build_user_model",
    "clean_stale_temp",
    "convnet",
    "input_shape_of",
    "is_user_model",
    "lenet",
    "load",
    "load_state",
    "mlp",
    "nin",
    "resnet18",
    "save",
    "save_atomic",
    "write_atomic",
]
