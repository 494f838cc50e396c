"""Defended MNIST weights that ship with the package, to try ``evaluate.py`` and the library without training.

Four checkpoints in the format of :func:`models.save <revnet_app.models.checkpoint.save>` (about 2 MB each), made
on the 5,000-image MNIST training subset of ``../shared/data`` by ``train/finetune.py`` at seed 0:

=====================  ===================================================================================
name                   what
=====================  ===================================================================================
``mlp-reference``      the MLP reference (plain cross-entropy, 20 epochs), ``finetune.py``'s cached reference
``mlp-deepdefense``    that reference fine-tuned with Deep Defense at the tuned defaults
``lenet-reference``    the LeNet reference
``lenet-deepdefense``  that reference fine-tuned with Deep Defense at the tuned defaults
=====================  ===================================================================================

``weights/manifest.json`` gives each file's SHA-256, the command that made it and its test metrics; the file is
checked against the checksum before it is read (``weights_only=True``, as every checkpoint here). Example::

    from revnet_app.models import pretrained
    net, ckpt = pretrained("lenet-deepdefense")     # net: revnet.Sequential in eval mode, inputs (N, 1, 28, 28)
    x = normalization.preprocess(images_uint8, ckpt["preprocess"])   # x/255 − the training mean
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import CheckpointError, load

WEIGHTS = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS / "manifest.json"


def manifest() -> dict[str, dict[str, Any]]:
    """``{name: {"file", "sha256", "arch", "command", "metrics", ...}}`` of the shipped checkpoints."""
    return json.loads(MANIFEST.read_text(encoding="utf-8"))["checkpoints"]


def available() -> list[str]:
    """The names :func:`pretrained` accepts."""
    return sorted(manifest())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained(name: str, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The shipped checkpoint ``name`` (see :func:`available`) as ``(net, checkpoint)``, ``net`` in eval mode;
    a wrong name, a missing file or a checksum mismatch is one ``CheckpointError`` line."""
    entries = manifest()
    if name not in entries:
        raise CheckpointError(f"no shipped weights named {name!r}; choose one of: {', '.join(sorted(entries))}.")
    entry = entries[name]
    path = WEIGHTS / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"the shipped weights {path} are missing; reinstall revnet (pip install -e .).")
    if sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path} does not match its SHA-256 in {MANIFEST.name}; the file is damaged, "
                              "reinstall revnet.")
    return load(path, arch=entry["arch"], map_location=map_location)
