"""Hardswish and Hardsigmoid (modules and functions). Filled in by issue 29."""

from __future__ import annotations

HARD_COUNTERPARTS: dict = {}
HARD_RULES: dict = {}
HARD_METHOD_RULES: dict = {}
