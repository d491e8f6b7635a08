"""Layers equiprune knows how to prune inside: multi-head self-attention, whose heads are players.

The tracer treats :class:`MultiHeadSelfAttention` as one unit (its reshapes into heads are not
channel-wise operations): a head owns its rows of the query, key and value projections and its
columns of the output projection, and its participation gates its output where ``proj`` reads it.
Use it in your own transformer to get head players; ``torch.nn.MultiheadAttention`` is not traced.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class MultiHeadSelfAttention(nn.Module):
    """Self-attention over (batch, tokens, dim) with ``heads`` heads of ``head_dim`` each.

    ``qkv`` holds the query, key and value rows in that order, each head-major; ``proj`` reads the
    heads' outputs concatenated head by head."""

    def __init__(self, dim: int, heads: int, head_dim: int | None = None):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim or dim // heads
        self.qkv = nn.Linear(dim, 3 * self.heads * self.head_dim)
        self.proj = nn.Linear(self.heads * self.head_dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
