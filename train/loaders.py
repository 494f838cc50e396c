"""``torch.utils.data`` pieces of the training scripts: in-memory image datasets, seeded and resumable epoch
order, seeded per-image augmentation, and evaluation sets that stream batches in bounded memory.

* ``TensorImages(images, labels)`` — a ``Dataset`` over in-memory images (MNIST's and CIFAR-10's uint8
  ``(N, C, H, W)``); item ``i`` is ``(images[i], int(labels[i]))``.
* ``EpochBatches(n, batch_size, seed, epoch, start=0, rank=0, world_size=1)`` — the batch sampler of one
  training epoch: ``DistributedSampler``'s permutation, ``torch.randperm(n)`` from a generator seeded with
  ``seed * 1000 + epoch``, split into global batches (the order the scripts have always used, so MNIST runs are
  bit-exact with the earlier whole-tensor path) of which each rank takes its share, skipping the first
  ``start`` batches (a resumed mid-epoch checkpoint). ``generator`` is that generator after the permutation:
  Parseval training draws its rows from it, as before.
* ``SeededItems(dataset, seed)`` — random augmentation that is a function of ``(seed, epoch, index)`` only, not of
  the worker process or of how often the run was resumed: each item is drawn under ``torch.random.fork_rng``
  seeded with those three numbers, and the caller's global RNG is left untouched.
* ``EvalSet(dataset, prepare, batch_size, ...)`` — a re-iterable set of evaluation batches ``(x, y)`` already on
  the device and preprocessed. It keeps them (and whatever the caller caches with them) in memory only if the
  whole set fits in ``cache_bytes``; otherwise every pass streams from the ``DataLoader`` again, so memory is
  bounded by the batch size, not by the data set.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

DEFAULT_CACHE_BYTES = 2 << 30  # evaluation sets up to 2 GiB (10,000 CIFAR-10 images: 0.15 GiB) stay in memory


class TensorImages(Dataset):
    """Images held in memory: item ``i`` is ``(images[i], int(labels[i]))`` (``images`` e.g. uint8
    ``(N, C, H, W)``, ``labels`` int64 ``(N,)``)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label per image.")
        self.images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])


class EpochBatches(Sampler):
    """Index batches of one training epoch, for one rank of ``world_size`` (1: a single process).

    The order is ``DistributedSampler(shuffle=True, seed=seed * 1000)`` at ``set_epoch(epoch)``: the permutation
    ``torch.randperm(n)`` drawn from a generator seeded with ``seed * 1000 + epoch`` (the order the scripts have
    always used), of which rank ``r`` holds positions ``r, r + world_size, …``. Global batch ``s`` is positions
    ``[s·B, (s+1)·B)`` of the permutation (``B = batch_size``, the global batch), whatever the number of ranks;
    this rank's batch ``s`` is its positions in that range, without the duplicates ``DistributedSampler`` pads
    with. ``global_sizes[s]`` is the size of global batch ``s`` (every rank's share together), for the loss
    scale. Batches before ``start`` are skipped (a resumed mid-epoch checkpoint). ``generator`` is a generator in
    the state after that permutation, the same on every rank: Parseval training draws its rows from it."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, *,
                 rank: int = 0, world_size: int = 1) -> None:
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed * 1000,
                                     drop_last=False)
        sampler.set_epoch(epoch)
        mine = list(sampler)  # positions rank, rank + world_size, ... of the permutation (padded at the end)
        self.generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        torch.randperm(n, generator=self.generator)  # the same draw, so the generator continues from there
        num = math.ceil(n / batch_size)
        bounds = [(s * batch_size, min((s + 1) * batch_size, n)) for s in range(num)]
        self.batches = [mine[_first_at(lo, rank, world_size):_first_at(hi, rank, world_size)] for lo, hi in bounds]
        self.global_sizes = [hi - lo for lo, hi in bounds]
        if not 0 <= start <= len(self.batches):
            raise ValueError(f"cannot start epoch {epoch} at batch {start}: it has {len(self.batches)} batches.")
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start:])

    def __len__(self) -> int:
        return len(self.batches) - self.start


def _first_at(position: int, rank: int, world_size: int) -> int:
    """The index ``j`` of the first of a rank's items (global positions ``rank + j·world_size``) at or after
    global ``position``."""
    return max(0, -(-(position - rank) // world_size))


class SeededItems(Dataset):
    """``dataset`` with reproducible random augmentation: item ``i`` of epoch ``epoch`` (set the attribute
    before building an epoch's ``DataLoader``) is read under a forked global RNG seeded with
    ``(seed, epoch, i)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2 ** 63))
            return self.dataset[index]


def epoch_loader(dataset: Dataset, batch_size: int, *, seed: int, epoch: int, start: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, rank: int = 0,
                 world_size: int = 1) -> tuple[DataLoader, EpochBatches]:
    """The ``DataLoader`` of one training epoch (``EpochBatches`` order for this rank, from batch ``start``) and
    its sampler.
    The loader's own generator (which seeds its workers) is seeded from ``seed`` and ``epoch`` too, so the global
    RNG (Dropout masks) is not drawn from."""
    if isinstance(dataset, SeededItems):
        dataset.epoch = epoch
    sampler = EpochBatches(len(dataset), batch_size, seed, epoch, start, rank=rank, world_size=world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(seed * 1000 + epoch + 1),
                        collate_fn=EmptyShareCollate(dataset) if world_size > 1 else None)
    return loader, sampler


class EmptyShareCollate:
    """``default_collate``, and for a rank's empty share of a global batch (a last batch with fewer images than
    ranks) an empty batch ``(x (0, *item shape), y (0,))`` of the items' dtypes, which ``default_collate`` cannot
    make (it reads the first item): the rank still takes its step, so it joins every collective."""

    def __init__(self, dataset: Dataset) -> None:
        x, y = dataset[0] if len(dataset) else (torch.zeros(0), 0)
        x = torch.as_tensor(x)
        self.x_shape, self.x_dtype = tuple(x.shape), x.dtype
        self.y_dtype = torch.as_tensor(y).dtype

    def __call__(self, items: list) -> Any:
        if items:
            return default_collate(items)
        return torch.empty((0, *self.x_shape), dtype=self.x_dtype), torch.empty(0, dtype=self.y_dtype)


@runtime_checkable
class EvalBatches(Protocol):
    """What the evaluation loops (``engine.evaluate``, ``engine.fgs_accuracy_stream``) read: a re-iterable set of
    ``(x, y)`` batches on the device, ``len()`` images in ``num_batches`` batches, and whether a caller may keep
    per-image data of its own next to them (``cached``). :class:`EvalSet` (a dataset through a ``DataLoader``) and
    :class:`TensorEvalSet` (tensors already in memory) implement it."""

    batch_size: int

    def __len__(self) -> int: ...

    @property
    def num_batches(self) -> int: ...

    def cached(self, extra_bytes_per_image: int = 0) -> bool: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


class TensorEvalSet:
    """Tensors already in memory as an :class:`EvalBatches`: ``batch_size`` chunks in order, always cached."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def cached(self, extra_bytes_per_image: int = 0) -> bool:
        return True

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.y), self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]


class EvalSet:
    """Evaluation batches ``(x, y)``: ``prepare(raw_x)`` (to the device, preprocessed) and ``y`` on the device,
    ``batch_size`` images each, in dataset order.

    ``len(evalset)`` is the number of images, ``evalset.num_batches`` that of batches. If ``n_images ·
    bytes_per_image`` fits in ``cache_bytes`` (``bytes_per_image`` of the prepared input, plus what the caller
    keeps per image, see :meth:`cached`), the first pass keeps the batches and later passes reuse them; else
    every pass reads the data again (bounded memory)."""

    def __init__(self, dataset: Dataset, prepare: Callable[[Tensor], Tensor], batch_size: int, *,
                 device: torch.device | str = "cpu", num_workers: int = 0, pin_memory: bool = False,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, bytes_per_image: Optional[int] = None) -> None:
        self.dataset, self.prepare, self.batch_size = dataset, prepare, batch_size
        self.device, self.num_workers, self.pin_memory = torch.device(device), num_workers, pin_memory
        self.bytes_per_image = bytes_per_image
        self.cache_bytes = cache_bytes
        self._batches: Optional[list[tuple[Tensor, Tensor]]] = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def cached(self, extra_bytes_per_image: int = 0) -> bool:
        """Whether the prepared batches (plus ``extra_bytes_per_image`` the caller keeps per image, e.g. FGS
        signs) fit in the cache budget."""
        if self.bytes_per_image is None:
            return False
        return len(self) * (self.bytes_per_image + extra_bytes_per_image) <= self.cache_bytes

    def _stream(self) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, generator=quiet_generator())
        for raw, y in loader:
            yield self.prepare(raw), y.to(self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._batches is not None:
            return iter(self._batches)
        if not self.cached():
            return self._stream()
        self._batches = list(self._stream())
        return iter(self._batches)

    def subset(self, n: int) -> "EvalSet":
        """The first ``n`` images as an ``EvalSet`` with the same settings."""
        from torch.utils.data import Subset

        n = min(n, len(self))
        sub = EvalSet(Subset(self.dataset, range(n)), self.prepare, self.batch_size, device=self.device,
                      num_workers=self.num_workers, pin_memory=self.pin_memory, cache_bytes=self.cache_bytes,
                      bytes_per_image=self.bytes_per_image)
        if self._batches is not None and n % self.batch_size == 0:
            sub._batches = self._batches[: n // self.batch_size]
        return sub


def quiet_generator() -> torch.Generator:
    """A generator for a ``DataLoader`` that needs no randomness: without one, every iterator draws its workers'
    base seed from the global RNG, which would shift the Dropout masks of the training that follows."""
    return torch.Generator().manual_seed(0)
