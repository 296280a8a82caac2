"""Masks as rules: what our registered mask function hands the attention function instead of a T×T tensor.

transformers builds every mask from a composable rule `mask_function(batch, head, q_idx, kv_idx) -> bool` plus the
offsets of the queries and keys in this forward. We keep that rule and evaluate it one chunk of query rows at a
time, so a 32k-token prompt never holds a 32k² mask. For rebuilding patterns later (numpy, no model), the rule is
also described as causal / window back / window ahead / chunk, and each evaluated chunk (when recording) is checked
against that description.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import CaptureError

PROBE_POSITION = (1 << 17) + 12345  # where a rule is probed for its window or chunk (sizes up to 2**17; off any power of 2)


@dataclass(eq=False)
class MaskRule:
    """One forward's mask for one layer type, unevaluated. Query row i (0-based in this forward) sits at position
    q_offset + i; key column j at kv_offset + j."""

    mask_function: object  # transformers' (batch, head, q_idx, kv_idx) -> bool, index-based
    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int = 0
    kv_offset: int = 0
    padding: Tensor | None = None  # (batch, keys) bool: False for padding keys
    _shape: dict = field(default_factory=dict, repr=False)  # memo of describe()

    # a few tensor-like answers, for model code that inspects the mask it passes along
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def _fn(self):  # noqa: ANN202
        fn = self.mask_function
        if self.padding is not None:
            from transformers.masking_utils import and_masks, padding_mask_function

            fn = and_masks(fn, padding_mask_function(self.padding))
        return fn

    def allowed(self, a: int, n: int, device: torch.device) -> Tensor:
        """Where query rows a..a+n may look: bool (batch, 1, n, kv_length)."""
        b = torch.arange(self.batch_size, device=device)[:, None, None, None]
        h = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]
        q = (torch.arange(a, a + n, device=device) + self.q_offset)[None, None, :, None]
        kv = (torch.arange(self.kv_length, device=device) + self.kv_offset)[None, None, None, :]
        out = self._fn()(b, h, q, kv)
        return torch.as_tensor(out, device=device).expand(self.batch_size, 1, n, self.kv_length)

    def _rule_at(self, q: Tensor, kv: Tensor) -> Tensor:
        """The bare rule (no padding) at broadcast positions q and kv, as a bool tensor."""
        zero = torch.zeros(1, dtype=torch.long)[:, None, None, None]
        out = torch.as_tensor(self.mask_function(zero, zero, q, kv))
        return out.expand(torch.broadcast_shapes(out.shape, q.shape, kv.shape))  # a rule may ignore kv (bidirectional)

    @property
    def known(self) -> tuple[bool, None, None, None] | None:
        """The description of transformers' own plain rules, known by identity (causal_mask_function: causal;
        bidirectional_mask_function: everything visible), so neither probing nor checking them can find anything
        else; None for every other rule (closures with a window or chunk, compositions: probed and checked)."""
        if self.padding is not None:
            return None
        from transformers import masking_utils

        if self.mask_function is masking_utils.causal_mask_function:
            return (True, None, None, None)
        if self.mask_function is getattr(masking_utils, "bidirectional_mask_function", None):
            return (False, None, None, None)
        return None

    def describe(self) -> tuple[bool, int | None, int | None, int | None]:
        """(causal, window, window_ahead, chunk) in ScoreRule's terms: a key is blocked when it lies after the
        query (causal), `window` or more positions before it, `window_ahead` or more after it, or in another
        chunk of `chunk` positions (Llama 4). Probed at two neighbouring far query positions over every key."""
        if not self._shape and self.known is not None:
            self._shape["v"] = self.known
        if not self._shape:
            p = PROBE_POSITION
            kv = torch.arange(0, 2 * p + 2)[None, None, None, :]
            rows = self._rule_at(torch.tensor([p, p + 1])[None, None, :, None], kv).reshape(2, 2 * p + 2)
            ok, ok_next = rows[0], rows[1]
            causal = not bool(ok[p + 1])
            start = int(ok[: p + 1].int().argmax())  # the first key at or before p that p may see
            start_next = int(ok_next[: p + 2].int().argmax())
            window = chunk = None
            if start > 0 and start_next == start + 1:
                window = p - start + 1  # blocked: k <= q - window
            elif start > 0 or start_next > 0:  # the first visible key stood still (or jumped): chunks
                q = torch.arange(p + 1, 2 * p + 2)[None, None, :, None]
                diagonal = self._rule_at(q, q - 1).reshape(p + 1)  # may q see q - 1?
                boundary = p + 1 + int((~diagonal).int().argmax())
                chunk = boundary - start
            ahead = (~ok[p + 1 :]).nonzero()
            window_ahead = None if causal or not len(ahead) else int(ahead[0]) + 1
            self._shape["v"] = (causal, window, window_ahead, chunk)
        return self._shape["v"]

    def check_chunk(self, allowed: Tensor, a: int, name: str, shape: tuple) -> None:
        """Raise if `shape` (describe()'s answer, kept per layer) would rebuild other patterns than the rule gives
        for these rows."""
        causal, window, ahead, chunk = shape
        n = allowed.shape[2]
        device = allowed.device
        qpos = (torch.arange(a, a + n, device=device) + self.q_offset)[:, None]
        kpos = (torch.arange(self.kv_length, device=device) + self.kv_offset)[None, :]
        blocked = torch.zeros(n, self.kv_length, dtype=torch.bool, device=device)
        if causal:
            blocked |= kpos > qpos
        if window is not None:
            blocked |= kpos <= qpos - window
        if ahead is not None:
            blocked |= kpos >= qpos + ahead
        if chunk is not None:
            blocked |= kpos // chunk != qpos // chunk
        if self.padding is not None or not torch.equal(allowed[0, 0], ~blocked):
            raise CaptureError(f"the attention mask of {name} is not causal / sliding-window / chunked / bidirectional "
                               "(e.g. padding or image blocks), which this version cannot rebuild; run with capture=False")


def inspector_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                   mask_function=None, attention_mask: Tensor | None = None, **_ignored) -> MaskRule:  # noqa: ANN001
    """transformers' AttentionMaskInterface entry: the rule itself, never a tensor."""
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask

    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset) if attention_mask is not None else None
    if padding is not None and bool(padding.all()):
        padding = None  # nothing padded: the plain rule (batch 1 sessions never pad)
    return MaskRule(mask_function or causal_mask_function, batch_size, q_length, kv_length, int(q_offset),
                    int(kv_offset), padding)
