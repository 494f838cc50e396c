"""Adversarial attacks driven by the explicit reverse pass: DeepFool (L2) and fast gradient sign (L∞)."""

from .deepfool import DeepFoolInfo, deepfool, deepfool_from_trace
from .fgs import ce_input_gradient, fgs_perturb

__all__ = ["DeepFoolInfo", "ce_input_gradient", "deepfool", "deepfool_from_trace", "fgs_perturb"]
