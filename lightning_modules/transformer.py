"""Transformer encoder backbone, written out in the minGPT style (not nn.TransformerEncoder).

Input through `SequenceInput` (token embedding, image rows or table features), plus a fixed
sinusoidal positional encoding; pre-norm blocks (LayerNorm before attention and before the MLP,
residuals around both); attention is `F.scaled_dot_product_attention`, whose default scale is
1/sqrt(head size), with a key padding mask so padding is never attended to. The features are the
mean of the final normed states over the non-padding tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.sequence import SequenceInput, sinusoidal_positions


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        assert d_model % heads == 0, "d_model must be a multiple of heads"
        self.qkv = nn.Linear(d_model, 3 * d_model)  # query, key, value for all heads in one matmul
        self.proj = nn.Linear(d_model, d_model)
        self.heads, self.dropout = heads, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        # Boolean mask, True = may attend; (B, 1, 1, T) broadcasts over heads and queries.
        mask = None if pad is None else ~pad[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # re-assemble the heads side by side
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pad)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], d_model: int = 64, heads: int = 4, layers: int = 2,
                 dropout: float = 0.1, vocab_size: int | None = None, pad_id: int = 0):
        super().__init__()
        self.input = SequenceInput(in_shape, d_model, vocab_size, pad_id)
        # Fixed, so not a parameter and not saved: rebuilt from the spec's shape.
        self.register_buffer("positions", sinusoidal_positions(self.input.length, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.out_features = d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, pad = self.input(x)  # (B, T, d)
        h = self.drop(h + self.positions[: h.shape[1]])
        for block in self.blocks:
            h = block(h, pad)
        h = self.ln_f(h)
        if pad is None:
            return h.mean(dim=1)
        keep = (~pad).unsqueeze(-1).to(h.dtype)  # (B, T, 1): mean over real tokens only
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)

    def layer_groups(self) -> list[list[nn.Module]]:
        return [[self.input], *([block] for block in self.blocks), [self.ln_f]]
