"""Vector quantizer: nearest codebook entry, straight-through gradients, commitment loss."""

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Quantizes (B, C, H, W) maps; TiTok l2-normalises both z and the codebook, the VQGAN does not."""

    def __init__(self, codebook_size: int, dim: int, commitment_cost: float = 0.25, use_l2_norm: bool = True):
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_cost = commitment_cost
        self.use_l2_norm = use_l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)

    def codebook(self) -> torch.Tensor:
        """The codebook as used for search and lookup (normalised when l2 mode is on)."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.use_l2_norm else w

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest codes for (M, C) vectors (normalised first in l2 mode)."""
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        e = self.codebook()
        # ||z||^2 + ||e||^2 - 2 z.e, in this order, so ties break as in the released code
        d = z.pow(2).sum(dim=1, keepdim=True) + e.pow(2).sum(dim=1) - 2 * torch.einsum("md,dn->mn", z, e.T)
        return d.argmin(dim=1)  # (M,)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer indices of any shape: (...,) -> (..., C)."""
        return F.embedding(indices, self.codebook())

    @torch.no_grad()
    def restart_unused(self, usage: torch.Tensor, z: torch.Tensor, rng: torch.Generator | None = None) -> int:
        """Move codes with ``usage == 0`` onto random encoder outputs ``z`` (M, C); returns how many moved.

        Training calls this every few hundred steps with the counts since the last call: without it a
        small codebook collapses onto the few codes the untrained encoder hits first.
        """
        dead = (usage == 0).nonzero().flatten()
        if len(dead) == 0:
            return 0
        pick = z[torch.randint(0, len(z), (len(dead),), generator=rng, device=z.device)].to(self.embedding.weight)
        if self.use_l2_norm:  # keep the stored norm of live codes; only the direction is used
            pick = F.normalize(pick, dim=-1) * self.embedding.weight.norm(dim=-1).mean()
        self.embedding.weight[dead] = pick
        return len(dead)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (z_quantized (B, C, H, W), indices (B, H, W), loss scalar)."""
        z = z.float()
        b, c, h, w = z.shape
        z = z.permute(0, 2, 3, 1).reshape(-1, c)  # (M, C)
        indices = self.nearest(z)  # (M,)
        zq = self.lookup(indices)  # (M, C)
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        # commitment pulls the encoder to its code, the codebook term pulls codes to the encoder
        loss = self.commitment_cost * (zq.detach() - z).pow(2).mean() + (zq - z.detach()).pow(2).mean()
        zq = z + (zq - z).detach()  # straight-through estimator
        zq = zq.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        return zq, indices.view(b, h, w), loss
