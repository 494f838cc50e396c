"""``python tests/finetune_killed.py K ARGS...``: ``train/finetune.py ARGS`` that kills itself with SIGKILL right after
the checkpoint of its K-th training step (counted over the whole run in this process), as a power cut would. The
tests use it (also under torchrun) to check that ``--resume`` then ends equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sys

from revnet_app.train import finetune


def kill_after(k: int):
    def after_checkpoint(steps: int) -> None:
        if steps >= k:
            os.kill(os.getpid(), signal.SIGKILL)
    return after_checkpoint


if __name__ == "__main__":
    finetune.cli(sys.argv[2:], after_checkpoint=kill_after(int(sys.argv[1])))
