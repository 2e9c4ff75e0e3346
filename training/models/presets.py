"""Named model configurations: the released paper models and small ones that train on a laptop CPU."""

from .config import ClassifierConfig, GeneratorConfig, ModelConfig, TiTokConfig, VQGANConfig

# ---------------------------------------------------------------------------------------------------
# Paper models (ImageNet 256x256; key names and shapes of the released checkpoints)
# ---------------------------------------------------------------------------------------------------

_PAPER_TOKENIZER = dict(image_size=256, patch_size=16, codebook_size=4096, token_size=12, legacy_reshape=True)
_SMALL, _BASE, _LARGE = (
    dict(width=512, depth=8, heads=8),
    dict(width=768, depth=12, heads=12),
    dict(width=1024, depth=24, heads=16),
)
_BERT = dict(arch="bert", hidden=768, depth=24, heads=16, intermediate=3072, codebook_size=4096, num_classes=1000)

PAPER = {
    "maskgit-vqgan": VQGANConfig(),
    "titok-l-32": TiTokConfig(**_PAPER_TOKENIZER, **_LARGE, num_latent_tokens=32),
    "titok-b-64": TiTokConfig(**_PAPER_TOKENIZER, **_BASE, num_latent_tokens=64),
    "titok-s-128": TiTokConfig(**_PAPER_TOKENIZER, **_SMALL, num_latent_tokens=128),
    "titok-l-32-generator": GeneratorConfig(
        **_BERT, seq_len=32, num_steps=8, temperature=9.5, guidance_scale=4.5, guidance_schedule="linear"
    ),
    "titok-b-64-generator": GeneratorConfig(
        **_BERT, seq_len=64, num_steps=8, temperature=11.0, guidance_scale=3.0, guidance_schedule="linear"
    ),
    "titok-s-128-generator": GeneratorConfig(
        arch="uvit",
        hidden=1024,
        depth=20,
        heads=16,
        intermediate=4096,
        codebook_size=4096,
        num_classes=1000,
        seq_len=128,
        num_steps=64,
        temperature=2.8,
        guidance_scale=6.9,
        guidance_schedule="power-cosine",
    ),
}

# ---------------------------------------------------------------------------------------------------
# Small models for 32x32 Fashion-MNIST (a few million parameters; train on 2 CPU cores)
# ---------------------------------------------------------------------------------------------------

# A 3-level VQGAN: 32x32 -> 8x8 codes, the same grid as a patch-4 ViT, so it can teach TiTok.
_FMNIST_VQGAN = VQGANConfig(
    image_size=32, hidden=32, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, codebook_size=512
)
_FMNIST_VIT = dict(image_size=32, patch_size=4, width=128, depth=4, heads=4, codebook_size=1024, token_size=12)


def _fmnist_titok(tokens: int, **kw) -> TiTokConfig:
    return TiTokConfig(**{**_FMNIST_VIT, "num_latent_tokens": tokens, "decoder_head": "pixel", **kw})


SMALL = {
    "vqgan-fmnist": _FMNIST_VQGAN,
    # 1D tokenizers, single-stage (pixel head); 32 tokens is the shipped family's tokenizer
    **{f"titok-fmnist-{n}": _fmnist_titok(n) for n in (8, 16, 32, 64)},
    # two-stage: proxy codes of vqgan-fmnist, then its decoder fine-tuned in pixel space
    "titok-fmnist-32-proxy": _fmnist_titok(32, decoder_head="proxy", pixel_vqgan=_FMNIST_VQGAN),
    # the paper's 2D ablation at equal token counts: the patch grid itself is quantized
    "titok2d-fmnist-16": _fmnist_titok(16, patch_size=8, grid_tokens=True),
    "titok2d-fmnist-64": _fmnist_titok(64, patch_size=4, grid_tokens=True),
    "generator-fmnist": GeneratorConfig(
        arch="bert",
        seq_len=32,
        codebook_size=1024,
        num_classes=10,
        hidden=160,  # ~1.6M parameters: the shipped family (checkpoints + ONNX graphs) stays under 30 MB
        depth=4,
        heads=4,
        intermediate=640,
        num_steps=8,
        temperature=4.5,
        guidance_scale=2.0,
        guidance_schedule="linear",
    ),
    # the FID/IS feature extractor and perceptual-loss network (``python -m training classifier``)
    "fmnist-classifier": ClassifierConfig(),
}

PRESETS: dict[str, ModelConfig] = {**PAPER, **SMALL}
