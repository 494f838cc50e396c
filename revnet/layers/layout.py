"""Layout rules: permute, transpose, movedim, chunk/split/unbind, expand, repeat, roll, pad, indexing. Filled in
by issue 29."""

from __future__ import annotations

LAYOUT_RULES: dict = {}
LAYOUT_METHOD_RULES: dict = {}
