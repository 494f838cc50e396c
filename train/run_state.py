"""A fine-tuning run's state between epochs: one dataclass, saved and checked in one place.

``OUT/resume/checkpoint.pt`` holds the model, optimizer and scheduler states, every rank's torch RNG state, the
last finished epoch, the per-epoch history, the reference's metrics, the run's flags and, after a checkpoint
within an epoch (``--checkpoint-every``), where in that epoch it was taken. :class:`RunState` writes it
(:meth:`RunState.save`, atomically, rank 0 alone), reads it (:meth:`RunState.load`: keys and tensor shapes
checked, the flags and the number of processes compared with this run's) and puts it back
(:meth:`RunState.restore`). Anything wrong is one ``error:`` line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch

from revnet_app import models
from revnet_app.train import distributed

RESUME_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "rng", "history", "reference_metrics")
"""What ``finetune.py`` writes into ``OUT/resume/checkpoint.pt`` and ``--resume`` needs."""

RESUME_FREE_ARGS = {"resume", "out", "no_progress", "device", "eval_batch_size", "data_dir", "cache_dir", "no_download",
                    "workers", "eval_cache_mb", "checkpoint_every", "model_flag", "threads"}
"""Flags that do not change the computation: ``--resume`` may give other values for them."""


@dataclasses.dataclass
class RunState:
    """Where a run is.

    ``epoch``: the last finished epoch (0 before the first); ``history``: one dict per finished epoch;
    ``reference_metrics``: the reference's evaluation (its ``own_eps_ref`` fixes every epoch's FGS step);
    ``mid_epoch``: ``{"epoch", "step", "totals", "generator", "rng"}`` of a checkpoint inside epoch ``epoch + 1``,
    else ``None``; ``steps_done``: training steps this process has taken (not saved; for the tests' kill switch).
    ``saved`` is the checkpoint :meth:`load` read, until :meth:`restore` puts it into the objects."""

    args: dict[str, Any]
    reference_metrics: dict[str, Any]
    epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    mid_epoch: Optional[dict[str, Any]] = None
    steps_done: int = 0
    saved: Optional[dict[str, Any]] = dataclasses.field(default=None, repr=False)

    @property
    def start_epoch(self) -> int:
        return self.epoch + 1

    def save(self, path: Path, net: torch.nn.Module, optimizer, scheduler, world: distributed.World) -> None:
        """Every rank calls it (the RNG states are gathered); rank 0 writes, and no rank goes on before the
        checkpoint is complete, so a kill after it always finds it."""
        rngs = world.gather(torch.get_rng_state())
        if world.main:
            models.save_atomic(
                {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": scheduler.state_dict(), "epoch": self.epoch,
                 "rng": {"torch": rngs[0], "ranks": rngs}, "world_size": world.size, "args": plain(self.args),
                 "history": self.history, "reference_metrics": self.reference_metrics,
                 **({"mid_epoch": self.mid_epoch} if self.mid_epoch else {})},
                path,
            )
        world.barrier()

    @classmethod
    def load(cls, path: Path, net: torch.nn.Module, device, args: dict[str, Any],
             world: distributed.World) -> "RunState":
        """The checkpoint at ``path``, checked against ``net``'s shapes, this run's flags ``args`` and the number
        of processes; nothing is changed yet (see :meth:`restore`)."""
        saved = load_resume(path, net, device)
        check_resume_args(saved.get("args", {}), args, path)
        check_resume_world(saved, world, path)
        return cls(args=args, reference_metrics=saved["reference_metrics"], epoch=saved["epoch"],
                   history=list(saved["history"]), mid_epoch=saved.get("mid_epoch"), saved=saved)

    def restore(self, net: torch.nn.Module, optimizer, scheduler, world: distributed.World) -> None:
        """Put the loaded checkpoint into the model, optimizer, scheduler and this rank's RNG."""
        saved, self.saved = self.saved, None
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["lr_scheduler"])
        torch.set_rng_state(saved["rng"].get("ranks", [saved["rng"]["torch"]])[world.rank])

    def where(self) -> str:
        m = self.mid_epoch
        return f"step {m['step']} of epoch {m['epoch']}" if m else f"epoch {self.epoch}"


def load_resume(path: str | Path, net: torch.nn.Module, device: torch.device | str) -> dict:
    """``--resume``'s checkpoint, checked (``models.load_state``: every key of ``RESUME_KEYS``, the model's state
    dict keys and shapes against ``net``); anything wrong is a one-line ``SystemExit``."""
    try:
        state = models.load_state(path, RESUME_KEYS, map_location=device, shapes={"model": net},
                                  what="resume checkpoint")
        if not isinstance(state["rng"], dict) or not isinstance(state["rng"].get("torch"), torch.Tensor):
            raise models.CheckpointError(f"{path} is not a usable resume checkpoint: rng['torch'] is missing.")
    except models.CheckpointError as exc:
        raise SystemExit(f"error: --resume: {exc} Start a new --out (or delete {path} to start this run afresh).") from None
    return state


def check_resume_world(state: dict[str, Any], world: distributed.World, path: Path) -> None:
    """Refuse ``--resume`` on another number of processes than the run's: each rank's random state is saved."""
    saved = state.get("world_size", 1)
    if saved != world.size:
        raise SystemExit(f"error: --resume of {path.parent.parent} with {world.size} process(es), but it was saved by "
                         f"{saved}; resume with torchrun --nproc_per_node={saved} (or as a single process if 1).")


def check_resume_args(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Refuse ``--resume`` with settings that differ from the run's (only the flags in ``RESUME_FREE_ARGS``,
    which do not change the computation, may differ), so a run never mixes configurations."""
    changed = sorted(key for key in set(saved) & set(now) if key not in RESUME_FREE_ARGS  # flags added later: absent
                     and plain(saved[key]) != plain(now[key]))
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise SystemExit(f"error: --resume with other settings than the run in {path.parent.parent} ({diffs}); "
                         "resume with the run's own flags (config.json lists them) or start a new --out.")


def plain(obj: Any) -> Any:
    """Only str/int/float/bool/None (and lists/dicts of them), as ``weights_only`` loading wants."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
