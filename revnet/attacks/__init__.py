"""Adversarial attacks driven by the explicit reverse pass: DeepFool (L2), fast gradient sign (L∞) and L2 PGD."""

from .deepfool import DeepFoolInfo, deepfool, deepfool_from_trace
from .fgs import ce_input_gradient, fgs_perturb
from .pgd import pgd_l2

__all__ = ["DeepFoolInfo", "ce_input_gradient", "deepfool", "deepfool_from_trace", "fgs_perturb", "pgd_l2"]
