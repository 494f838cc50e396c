"""Stochastic depth (torchvision.ops.stochastic_depth / StochasticDepth, timm DropPath): identity in eval, a
per-sample mask carried as noise in training. Filled in by issue 29."""

from __future__ import annotations

DROPPATH_COUNTERPARTS: dict = {}
DROPPATH_RULES: dict = {}
