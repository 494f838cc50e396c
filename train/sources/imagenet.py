"""**ImageNet** — ``imagenet(data_dir, train, crop=224)`` is a ``torchvision.datasets.ImageFolder``::

    DATA_DIR/train/<wnid>/*.JPEG     e.g. DATA_DIR/train/n01440764/n01440764_10026.JPEG
    DATA_DIR/val/<wnid>/*.JPEG       the 50,000 validation images sorted into the same class folders

An item is ``(image, label)``: ``image`` float32 ``(3, crop, crop)`` in [0, 1] after the standard preprocessing
(``imagenet_transform``): training ``RandomResizedCrop(crop)`` + ``RandomHorizontalFlip()``; evaluation
``Resize(round(crop * 256 / 224))`` (the shorter side) + ``CenterCrop(crop)``; then ``ToTensor()``. ``label`` is
the index of the class folder in sorted order (``.classes``, ``.class_to_idx``, ``.targets`` as in
``ImageFolder``). Unreadable images are skipped with a warning line (see ``SkippingImageFolder``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from revnet_app.train.sources import DataError, one_line

PathLike = Union[str, os.PathLike]

IMAGENET_LAYOUT = "DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG"


def imagenet_transform(train: bool, crop: int = 224) -> Callable:
    """The standard ImageNet preprocessing of a PIL image into float32 ``(3, crop, crop)`` in [0, 1]: training
    ``RandomResizedCrop(crop)`` + ``RandomHorizontalFlip()``, evaluation ``Resize(round(crop * 256 / 224))`` +
    ``CenterCrop(crop)``; then ``ToTensor()`` (normalise with ``normalize(x, imagenet_stats())``)."""
    if train:
        return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(round(crop * 256 / 224)), T.CenterCrop(crop), T.ToTensor()])


class SkippingImageFolder(ImageFolder):
    """``ImageFolder`` that skips unreadable images.

    Policy: an image that PIL cannot open or decode (a corrupt or truncated JPEG, an empty file) is skipped
    when it is first read: one warning line on stderr naming the file (once per file and process: with
    ``DataLoader`` workers, which are new processes every epoch, once per worker and epoch that meets it), and the
    item is the next readable image in folder order (wrapping around) with its own label, so ``len()`` and the
    batch shapes stay fixed and one bad file does not stop a multi-hour run. The files are not opened when the
    dataset is built (that would read all 1.28 M training images up front). ``bad_files`` lists the skipped
    paths seen by this process. Only if no image at all is readable is it a ``DataError``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_files: set[str] = set()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            if path in self.bad_files:
                continue
            try:
                image = self.loader(path)
            except Exception as exc:  # noqa: BLE001 - OSError, PIL.UnidentifiedImageError, SyntaxError, ...
                self.bad_files.add(path)
                print(f"warning: skipping unreadable image {path} ({one_line(exc)}); using the next image "
                      "instead", file=sys.stderr, flush=True)
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target
        raise DataError(f"no image in {self.root} is readable ({len(self.bad_files)} unreadable files); "
                        "replace them with good copies.")


def imagenet(data_dir: PathLike, train: bool, *, crop: int = 224,
             transform: Optional[Callable] = None) -> SkippingImageFolder:
    """ImageNet's ``data_dir/train/`` (``train=True``) or ``data_dir/val/`` as a ``SkippingImageFolder`` (an
    ``ImageFolder``), items ``(float32 (3, crop, crop), label)`` after ``imagenet_transform(train, crop)``, or
    after ``transform`` (given a PIL RGB image) if one is given.

    Unreadable images: skipped with one warning line naming the file; the item is the next readable image (see
    ``SkippingImageFolder``). A missing or empty folder, or one without images, is a ``DataError`` naming
    ``--data-dir`` and the layout.
    """
    root = Path(data_dir)
    split = "train" if train else "val"
    folder = root / split
    hint = f"pass --data-dir DIR with ImageNet in ImageFolder layout: {IMAGENET_LAYOUT}"
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir {root} is a file, not a folder; {hint}.")
    if not folder.is_dir():
        what = "does not exist" if not root.is_dir() else f"has no {split}/ folder"
        raise DataError(f"--data-dir {root} {what}; {hint}.")
    try:
        transform = transform if transform is not None else imagenet_transform(train, crop)
        return SkippingImageFolder(str(folder), transform=transform)
    except FileNotFoundError as exc:  # no class folders, or no image files in them
        raise DataError(f"ImageNet {split} folder {folder} holds no images ({one_line(exc)}); {hint}.") from None
