"""timm's attention helpers, which timm hides from torch.fx (``torch.fx.wrap``), as whole-function rules.

* ``maybe_add_mask(scores, mask)``: ``scores`` unchanged when ``mask`` is ``None``, else ``scores + mask`` with a
  constant mask (one that depends on the input is refused): the reverse passes ``v`` through to ``scores``.
* ``resolve_self_attn_mask(seq_len, attn, attn_mask, is_causal)`` builds the additive mask from the sequence
  length, ``attn``'s dtype and device and the constant ``attn_mask``/``is_causal``: it reads no value of ``attn``,
  so the graph computes it as a constant (``VALUE_FREE_FUNCTIONS``).

Both tables are empty when timm is not installed; revnet does not depend on timm.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from torch import Tensor

from ..errors import UnsupportedLayerError

try:
    from timm.layers import attention as _timm_attention
except ImportError:  # pragma: no cover - timm is optional (it is in the test extra)
    _timm_attention = None


class PassTape(NamedTuple):
    pass


class MaybeAddMaskRule:
    """``maybe_add_mask(scores, attn_mask=None)``; shapes: scores, y ``(T, *s)``; v, g ``(T·K, *s)``."""

    def inputs(self, args, kwargs) -> list:
        return [args[0] if args else kwargs["scores"], args[1] if len(args) > 1 else kwargs.get("attn_mask")]

    def forward(self, call, args, kwargs) -> Tensor:
        return call(*args, **kwargs)

    def trace(self, call, args, kwargs, live) -> tuple[Tensor, PassTape]:
        if len(live) > 1 and live[1]:
            raise UnsupportedLayerError("timm's maybe_add_mask with a mask that depends on the input has no reverse; "
                                        "the mask must be a constant.")
        return call(*args, **kwargs), PassTape()

    def reverse(self, v: Tensor, tape: PassTape) -> list[Optional[Tensor]]:
        return [v, None]


TIMM_RULES: dict[Any, Any] = {}
VALUE_FREE_FUNCTIONS: set = set()
if _timm_attention is not None:
    TIMM_RULES[_timm_attention.maybe_add_mask] = MaybeAddMaskRule()
    VALUE_FREE_FUNCTIONS.add(_timm_attention.resolve_self_attn_mask)
