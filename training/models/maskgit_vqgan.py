"""MaskGIT-VQGAN: the 2D teacher whose codes TiTok learns to predict, and the pixel decoder of TiTok.

A plain conv net without attention. Two layout facts of the released weights are kept on purpose:
``nin_shortcut`` (where channels change) is applied to the block's *output*, and the decoder's ``up``
list is stored from the finest level (``up.0``) to the coarsest but run coarsest first.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import to_unit_float
from .config import VQGANConfig
from .quantizer import VectorQuantizer

# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


def _conv3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)  # == TF "same" padding at stride 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the residual is the input, or nin_shortcut(output) if channels change."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv1 = _conv3(cin, cout, bias=False)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv2 = _conv3(cout, cout, bias=False)
        self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, cout, H, W)
        residual = x if self.nin_shortcut is None else self.nin_shortcut(h)  # released quirk
        return h + residual


class DownLevel(nn.Module):
    """ResBlocks at one resolution, then a 2x average pool (all levels but the last)."""

    def __init__(self, cin: int, cout: int, num_blocks: int, downsample: bool):
        super().__init__()
        self.block = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout) for i in range(num_blocks)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return F.avg_pool2d(x, 2) if self.downsample else x


class UpLevel(nn.Module):
    """ResBlocks at one resolution, then nearest 2x upsampling + 3x3 conv (all levels but the finest)."""

    def __init__(self, cin: int, cout: int, num_blocks: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout) for i in range(num_blocks)])
        self.upsample_conv = _conv3(cout, cout) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


# ---------------------------------------------------------------------------------------------------
# Encoder, decoder, the VQGAN
# ---------------------------------------------------------------------------------------------------


class VQGANEncoder(nn.Module):
    """Image in [0, 1] (B, 3, H, W) -> latents (B, z_channels, H/2^L, W/2^L)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        chans = [cfg.hidden * m for m in cfg.channel_mult]
        last = len(chans) - 1
        self.conv_in = _conv3(3, cfg.hidden, bias=False)  # the released encoder's first conv has no bias
        self.down = nn.ModuleList(
            [DownLevel(([cfg.hidden] + chans)[i], c, cfg.num_res_blocks, i != last) for i, c in enumerate(chans)]
        )
        self.mid = nn.ModuleList([ResBlock(chans[-1], chans[-1]) for _ in range(cfg.num_res_blocks)])
        self.norm_out = nn.GroupNorm(32, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # (B, hidden, H, W)
        for level in self.down:
            x = level(x)
        for blk in self.mid:
            x = blk(x)  # (B, C_top, h, w)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, z, h, w)


class VQGANDecoder(nn.Module):
    """Latents (B, z_channels, h, w) -> image (B, 3, h*2^L, w*2^L), unclamped."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        chans = [cfg.hidden * m for m in cfg.channel_mult]
        self.conv_in = _conv3(cfg.z_channels, chans[-1])
        self.mid = nn.ModuleList([ResBlock(chans[-1], chans[-1]) for _ in range(cfg.num_res_blocks)])
        # level i takes the channels of level i+1 (or the top) and upsamples unless it is the finest
        self.up = nn.ModuleList(
            [UpLevel((chans + [chans[-1]])[i + 1], c, cfg.num_res_blocks, i != 0) for i, c in enumerate(chans)]
        )
        self.norm_out = nn.GroupNorm(32, chans[0], eps=1e-6)
        self.conv_out = _conv3(chans[0], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)  # (B, C_top, h, w)
        for blk in self.mid:
            x = blk(x)
        for level in reversed(self.up):  # coarsest first
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 3, H, W)


class MaskGITVQGAN(nn.Module):
    """The full 2D VQGAN: encoder, plain VQ codebook, decoder."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = VQGANEncoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.z_channels, cfg.commitment_cost, use_l2_norm=False)
        self.decoder = VQGANDecoder(cfg)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Images in [0, 1] -> (reconstruction (B, 3, H, W), {"quantizer_loss", "indices"})."""
        zq, indices, loss = self.quantize(self.encoder(images))
        return self.decoder(zq), {"quantizer_loss": loss, "indices": indices.flatten(1)}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (uint8 or [0, 1] float) -> code ids (B, h*w), row-major."""
        _, indices, _ = self.quantize(self.encoder(to_unit_float(images)))
        return indices.flatten(1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h*w) -> images (B, 3, H, W) in [0, 1]."""
        g = self.config.grid_size
        z = self.quantize.lookup(codes).view(codes.shape[0], g, g, -1).permute(0, 3, 1, 2)  # (B, z, g, g)
        return self.decoder(z).clamp(0, 1)
