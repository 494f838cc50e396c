"""What the figure scripts share: the models' display names, the markers, NaN for a missing number, and an
atomic PNG write (a temporary file in the same folder, then ``os.replace``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

MODEL_NAMES = {"mlp": "MLP", "lenet": "LeNet", "alexnet": "AlexNet", "nin": "NIN"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _save_png(fig: Any, path: Path, dpi: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
