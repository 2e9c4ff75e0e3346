"""Building blocks shared by the tokenizers and the generators.

Three block flavours, each named after the layout of the released checkpoints it must load:
  * ResidualAttentionBlock: pre-LN ViT block (CLIP naming) used by the TiTok encoder/decoder;
  * BertLayer: post-LN BERT layer (``transformers.BertModel`` naming) used by the MaskGIT generator;
  * UViTBlock: pre-LN block with an optional long skip, used by TiTok-S-128's U-ViT generator.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def to_unit_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The models' input contract: uint8 in [0, 255] or float in [0, 1] -> ``dtype`` in [0, 1] (floats keep grads)."""
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    return images.to(dtype)


def init_weights(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> None:
    """Truncated-normal(0.02) weights for ``kinds`` modules, zero biases, unit LayerNorms (in module order)."""
    for m in model.modules():
        if isinstance(m, kinds):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------
# ViT block (TiTok encoder / decoder)
# ---------------------------------------------------------------------------------------------------


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)); sequence-first (L, B, D) like CLIP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)  # eps 1e-5, as released
        self.attn = nn.MultiheadAttention(width, heads)  # fused in_proj with bias, sequence-first
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)  # (L, B, D)
        x = x + self.attn(h, h, h, need_weights=False)[0]  # (L, B, D)
        return x + self.mlp(self.ln_2(x))  # (L, B, D)


# ---------------------------------------------------------------------------------------------------
# BERT layer (MaskGIT generator, transformers.BertModel key names)
# ---------------------------------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, H, N, Dh)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)  # (B, N, D)


class BertSelfAttention(nn.Module):
    """Separate query/key/value projections with bias (``attention.self``)."""

    def __init__(self, hidden: int, heads: int, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(proj(x), self.heads) for proj in (self.query, self.key, self.value))
        p = self.attn_dropout if self.training else 0.0
        return _merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p))  # (B, N, D)


class BertOutput(nn.Module):
    """Projection, dropout, then the post-LN residual (``attention.output`` and ``output``)."""

    def __init__(self, in_features: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    """``attention`` = ``self`` + ``output``, names kept for checkpoint compatibility."""

    def __init__(self, hidden: int, heads: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, attn_dropout)
        self.output = BertOutput(hidden, hidden, dropout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    """First FFN projection with exact GELU."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Post-LN BERT layer: LN(x + Attn(x)), then LN(h + FFN(h))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        self.attention = BertAttention(hidden, heads, dropout, attn_dropout, eps)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertOutput(intermediate, hidden, dropout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention(x)  # (B, N, D)
        return self.output(self.intermediate(h), h)  # (B, N, D)


# ---------------------------------------------------------------------------------------------------
# U-ViT block (TiTok-S-128 generator, timm-style naming)
# ---------------------------------------------------------------------------------------------------


class UViTAttention(nn.Module):
    """Fused qkv projection (no bias) and an output projection with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])))  # (B, N, D)


class UViTMlp(nn.Module):
    """fc1, exact GELU, fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class UViTBlock(nn.Module):
    """Pre-LN block; out-blocks first merge the long skip with ``skip_linear([x, skip])``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = UViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = UViTMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # (B, N, D)
