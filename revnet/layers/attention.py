"""Attention: softmax/log_softmax over a non-batch dim, products of two traced tensors (matmul, bmm, einsum),
F.scaled_dot_product_attention and nn.MultiheadAttention. Filled in by issue 29."""

from __future__ import annotations

ATTENTION_COUNTERPARTS: dict = {}
ATTENTION_RULES: dict = {}
ATTENTION_METHOD_RULES: dict = {}
