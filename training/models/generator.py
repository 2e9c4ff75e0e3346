"""MaskGIT generators: predict the image tokens hidden behind the mask id, given a class token.

The input is [class token, N image tokens]; the class token's output is dropped. Classes are passed as
indices 0..num_classes-1, or num_classes for the null class of classifier-free guidance; the shift into
the vocabulary (``codebook_size + 1 + c``) happens here, once.
"""

import torch
from torch import nn

from .blocks import BertLayer, UViTBlock, init_weights
from .config import GeneratorConfig

# ---------------------------------------------------------------------------------------------------
# BERT backbone (keys of transformers.BertModel under ``model.``)
# ---------------------------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type-0 embeddings, then post-LN and dropout."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.seq_len + 1, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(2, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        pos = self.position_embeddings.weight[:n]  # (L, D): absolute positions 0..L-1
        x = self.word_embeddings(ids) + pos + self.token_type_embeddings.weight[0]  # (B, L, D)
        return self.dropout(self.LayerNorm(x))


class BertEncoder(nn.Module):
    """The stack of post-LN layers, named ``encoder.layer.{i}``."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                BertLayer(cfg.hidden, cfg.heads, cfg.intermediate, cfg.dropout, cfg.attn_dropout, eps=1e-12)
                for _ in range(cfg.depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertLM(nn.Module):
    """``model`` of ImageBert: embeddings, encoder and an untied ``lm_head`` over the codebook."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.codebook_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.encoder(self.embeddings(ids)))  # (B, L, K)


# ---------------------------------------------------------------------------------------------------
# The generators
# ---------------------------------------------------------------------------------------------------


class _MaskGITBase(nn.Module):
    """Shared input handling: the class shift, the class token, dropping its output."""

    config: GeneratorConfig

    def class_token_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) in [0, num_classes] (num_classes = null) -> vocabulary ids (B,)."""
        return labels + self.config.codebook_size + 1

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) with mask ids + class indices (B,) -> logits over the codebook (B, N, K)."""
        ids = torch.cat([self.class_token_ids(labels).view(-1, 1), tokens], dim=1)  # (B, 1+N)
        return self.backbone_logits(ids)[:, 1:]  # (B, N, K)

    def backbone_logits(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MaskGITBert(_MaskGITBase):
    """ImageBert: the BERT-layout MaskGIT generator released with TiTok-L-32 and B-64."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        self.model = BertLM(cfg)
        init_weights(self, (nn.Linear, nn.Embedding))  # truncated normal(0.02), see blocks.init_weights

    def backbone_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)


class MaskGITUViT(_MaskGITBase):
    """UViTBert: in-blocks, a mid-block and out-blocks joined by long skips (TiTok-S-128's generator)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        half = cfg.depth // 2
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len + 1, cfg.hidden))
        self.in_blocks = nn.ModuleList([UViTBlock(cfg.hidden, cfg.heads, cfg.intermediate) for _ in range(half)])
        self.mid_block = UViTBlock(cfg.hidden, cfg.heads, cfg.intermediate)
        self.out_blocks = nn.ModuleList(
            [UViTBlock(cfg.hidden, cfg.heads, cfg.intermediate, skip=True) for _ in range(half)]
        )
        self.norm = nn.LayerNorm(cfg.hidden)
        self.lm_head = nn.Linear(cfg.hidden, cfg.codebook_size)
        init_weights(self, (nn.Linear, nn.Embedding))  # truncated normal(0.02), see blocks.init_weights
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def backbone_logits(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids) + self.pos_embed[:, : ids.shape[1]]  # (B, L, D)
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())  # deepest in-block meets the first out-block
        return self.lm_head(self.norm(x))  # (B, L, K)
