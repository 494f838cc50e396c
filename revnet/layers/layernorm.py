"""LayerNorm and GroupNorm (modules and functions) and F.batch_norm with running statistics: reverses that
keep the normalisation's derivative in the autograd graph (second order exact). Filled in by issue 29."""

from __future__ import annotations

NORM_COUNTERPARTS: dict = {}
NORM_RULES: dict = {}
NORM_METHOD_RULES: dict = {}
