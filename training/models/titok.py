"""TiTok: a ViT that reads an image and N learned latent tokens, keeps the latents, and quantizes them.

Sequence layout (encoder): [class, patch_1..patch_P] + positions, then the N latent tokens + their own
positions; only the last N outputs are kept. The decoder reads [class, P mask tokens] + positions and
the N embedded codes, keeps the P patch outputs and turns them into pixels ("pixel" head) or into
logits over a MaskGIT-VQGAN's codes that its pixel decoder renders ("proxy" head, the released models).
With ``grid_tokens`` the same machinery is the paper's 2D baseline: the patch grid itself is quantized.
"""

from dataclasses import replace

import torch
from torch import nn

from .blocks import ResidualAttentionBlock, init_weights, to_unit_float
from .config import TiTokConfig
from .maskgit_vqgan import VQGANDecoder
from .quantizer import VectorQuantizer

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _embedding(*shape: int, width: int) -> nn.Parameter:
    return nn.Parameter(width**-0.5 * torch.randn(*shape))


class DepthToSpace(nn.Module):
    """(B, p*p*3, h, w) -> (B, 3, h*p, w*p) with channels ordered (p1, p2, c), as the pixel head expects."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch
        x = x.view(b, p, p, 3, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, 3, h, p1, w, p2)
        return x.reshape(b, 3, h * p, w * p)


def _blocks(cfg: TiTokConfig, depth: int) -> nn.ModuleList:
    return nn.ModuleList([ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(depth)])


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.permute(1, 0, 2)  # (B, L, D) -> (L, B, D): the blocks are sequence-first
    for blk in blocks:
        x = blk(x)
    return x.permute(1, 0, 2)  # (B, L, D)


# ---------------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------------


class TiTokEncoder(nn.Module):
    """Image (B, 3, H, W) in [0, 1] + latent tokens (N, D) -> continuous tokens (B, token_size, 1, N)."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = _embedding(1, w, width=w)
        self.positional_embedding = _embedding(cfg.grid_size**2 + 1, w, width=w)
        if not cfg.grid_tokens:
            self.latent_token_positional_embedding = _embedding(cfg.num_latent_tokens, w, width=w)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = _blocks(cfg, cfg.depth)
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, cfg.token_size, 1)

    def forward(self, images: torch.Tensor, latent_tokens: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        b = images.shape[0]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, D)
        x = torch.cat([self.class_embedding.expand(b, -1, -1), x], dim=1) + self.positional_embedding  # (B, 1+P, D)
        if not cfg.grid_tokens:
            latents = (latent_tokens + self.latent_token_positional_embedding).expand(b, -1, -1)  # (B, N, D)
            x = torch.cat([x, latents], dim=1)  # (B, 1+P+N, D)
        x = _run_blocks(self.transformer, self.ln_pre(x))
        n = cfg.num_tokens
        z = self.ln_post(x[:, -n:])  # (B, N, D): the latents, or the patches in the 2D variant
        if cfg.legacy_reshape:
            z = z.reshape(b, cfg.width, n, 1)  # the released models' memory reshape, not a transpose
        else:
            z = z.transpose(1, 2).unsqueeze(-1)  # (B, D, N, 1)
        return self.conv_out(z).reshape(b, cfg.token_size, 1, n)  # (B, C, 1, N)


class TiTokDecoder(nn.Module):
    """Quantized tokens (B, token_size, 1, N) -> pixels (B, 3, H, W) or proxy-code logits (B, K, g, g)."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.decoder_embed = nn.Linear(cfg.token_size, w)
        self.class_embedding = _embedding(1, w, width=w)
        self.positional_embedding = _embedding(cfg.grid_size**2 + 1, w, width=w)
        if not cfg.grid_tokens:
            self.mask_token = _embedding(1, 1, w, width=w)
            self.latent_token_positional_embedding = _embedding(cfg.num_latent_tokens, w, width=w)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = _blocks(cfg, cfg.decoder_blocks)
        self.ln_post = nn.LayerNorm(w)
        if cfg.decoder_head == "proxy":
            k = cfg.pixel_vqgan.codebook_size
            self.ffn = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, k, 1))
            self.conv_out = nn.Identity()
        else:
            self.ffn = nn.Sequential(nn.Conv2d(w, cfg.patch_size**2 * 3, 1), DepthToSpace(cfg.patch_size))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, g = zq.shape[0], cfg.grid_size
        x = self.decoder_embed(zq.flatten(1, 2).transpose(1, 2))  # (B, N, D)
        cls = self.class_embedding.expand(b, -1, -1)  # (B, 1, D)
        if cfg.grid_tokens:
            x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, 1+P, D)
        else:
            masks = torch.cat([cls, self.mask_token.expand(b, g * g, -1)], dim=1) + self.positional_embedding
            x = torch.cat([masks, x + self.latent_token_positional_embedding], dim=1)  # (B, 1+P+N, D)
        x = _run_blocks(self.transformer, self.ln_pre(x))
        x = self.ln_post(x[:, 1 : 1 + g * g])  # (B, P, D)
        x = x.transpose(1, 2).reshape(b, cfg.width, g, g)  # (B, D, g, g)
        return self.conv_out(self.ffn(x))  # (B, 3, H, W) or (B, K, g, g)


# ---------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------


class TiTok(nn.Module):
    """The TiTok tokenizer (1D, or the 2D-grid ablation with ``grid_tokens``)."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        self.config = cfg
        if not cfg.grid_tokens:
            self.latent_tokens = _embedding(cfg.num_latent_tokens, cfg.width, width=cfg.width)
        self.encoder = TiTokEncoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.commitment_cost, cfg.use_l2_norm)
        self.decoder = TiTokDecoder(cfg)
        if cfg.decoder_head == "proxy":
            vq = cfg.pixel_vqgan
            self.pixel_quantize = VectorQuantizer(vq.codebook_size, vq.z_channels, use_l2_norm=False)
            self.pixel_decoder = VQGANDecoder(vq)
        init_weights(self, (nn.Linear, nn.Conv2d, nn.Embedding))

    # -- the call surface -------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Images -> (decoder output: pixels or proxy logits, {"quantizer_loss", "indices" (B, N)})."""
        zq, indices, loss = self.quantize(self.encode_latents(images))
        return self.decoder(zq), {"quantizer_loss": loss, "indices": indices.flatten(1)}

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (uint8 or [0, 1] float, NCHW) -> continuous tokens (B, token_size, 1, N)."""
        return self.encoder(to_unit_float(images), getattr(self, "latent_tokens", None))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (uint8 or [0, 1] float, NCHW) -> token ids (B, N), int64."""
        z = self.encode_latents(images)  # (B, C, 1, N)
        b, c, _, n = z.shape
        return self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, n)

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> quantized tokens (B, token_size, 1, N)."""
        return self.quantize.lookup(tokens).transpose(1, 2).unsqueeze(2)

    def proxy_to_pixels(self, logits: torch.Tensor) -> torch.Tensor:
        """Proxy-code logits (B, K, g, g) -> soft VQGAN latents -> pixels (B, 3, H, W), unclamped."""
        soft = torch.einsum("bkhw,kc->bchw", logits.softmax(dim=1), self.pixel_quantize.codebook())  # (B, 256, g, g)
        return self.pixel_decoder(soft)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized tokens (B, token_size, 1, N) -> pixels (B, 3, H, W), unclamped (for losses)."""
        out = self.decoder(zq)
        return self.proxy_to_pixels(out) if self.config.decoder_head == "proxy" else out

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> images (B, 3, H, W), float in [0, 1]."""
        return self.decode(self.tokens_to_latents(tokens)).clamp(0.0, 1.0)

    def freeze_encoder(self):
        """Stage 2 of the two-stage recipe: encoder, latent tokens and quantizer stay fixed."""
        for module in (self.encoder, self.quantize):
            module.requires_grad_(False).eval()
        if hasattr(self, "latent_tokens"):
            self.latent_tokens.requires_grad_(False)


def deepen_decoder(model: TiTok, depth: int) -> TiTok:
    """A copy of ``model`` whose decoder has ``depth`` blocks: its own, then new ones whose output projections
    start at zero, so each new block is the identity and the copy decodes exactly as ``model`` did. Fine-tuning
    then adds capacity to a decoder without touching the encoder or the codebook, so every image keeps its tokens."""
    old = model.config.decoder_blocks
    if depth < old:
        raise ValueError(f"decoder_depth {depth} would drop blocks of a decoder that has {old}")
    grown = TiTok(replace(model.config, decoder_depth=depth))
    loaded = grown.load_state_dict(model.state_dict(), strict=False)
    assert not loaded.unexpected_keys and all(k.startswith("decoder.transformer.") for k in loaded.missing_keys)
    for blk in grown.decoder.transformer[old:]:
        for proj in (blk.attn.out_proj, blk.mlp.c_proj):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
    return grown.train(model.training)
