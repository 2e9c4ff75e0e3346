"""Model configurations: plain dataclasses that round-trip through JSON (``config.json`` of a checkpoint)."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from titok_core.sampler import SCHEDULES


def strict_fields(cls: type, data: Mapping, what: str) -> Mapping:
    """``data`` if every key is a field of the dataclass ``cls``: a typo fails loudly instead of being dropped."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what}: {unknown}")
    return data


# ---------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------


@dataclass
class VQGANConfig:
    """MaskGIT-VQGAN: a conv encoder/decoder (no attention) around a plain (not l2) VQ codebook."""

    kind = "vqgan"
    image_size: int = 256
    hidden: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    commitment_cost: float = 0.25

    @property
    def grid_size(self) -> int:
        """Side of the code grid: one 2x average-pool per level but the last."""
        return self.image_size // 2 ** (len(self.channel_mult) - 1)

    @property
    def num_tokens(self) -> int:
        """Codes per image: the whole grid."""
        return self.grid_size**2


@dataclass
class TiTokConfig:
    """TiTok tokenizer: ViT encoder -> N latent tokens -> VQ -> ViT decoder -> pixels or proxy codes.

    ``decoder_head`` is "pixel" (single-stage: 1x1 conv, depth-to-space, 3x3 conv) or "proxy" (two-stage:
    logits over the codes of ``pixel_vqgan``, decoded by its frozen-then-finetuned pixel decoder).
    ``grid_tokens`` is the paper's 2D ablation: no latent tokens, the patch grid itself is quantized.
    ``legacy_reshape`` reproduces the released models' memory reshape before ``conv_out``.
    ``decoder_depth`` gives the decoder its own number of blocks (None: ``depth``, as in every released layout).
    """

    kind = "titok"
    image_size: int = 256
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    num_latent_tokens: int = 32
    codebook_size: int = 4096
    token_size: int = 12
    commitment_cost: float = 0.25
    use_l2_norm: bool = True
    decoder_head: str = "proxy"
    legacy_reshape: bool = False
    grid_tokens: bool = False
    pixel_vqgan: VQGANConfig | None = field(default_factory=VQGANConfig)
    decoder_depth: int | None = None

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def decoder_blocks(self) -> int:
        return self.depth if self.decoder_depth is None else self.decoder_depth

    @property
    def num_tokens(self) -> int:
        """Tokens per image: the latent tokens, or the whole patch grid in the 2D variant."""
        return self.grid_size**2 if self.grid_tokens else self.num_latent_tokens

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.decoder_depth is not None and self.decoder_depth < 1:
            raise ValueError(f"decoder_depth must be at least 1 (or None for depth), not {self.decoder_depth}")
        if self.decoder_head not in ("pixel", "proxy"):
            raise ValueError(f"decoder_head must be 'pixel' or 'proxy', not {self.decoder_head!r}")
        if isinstance(self.pixel_vqgan, dict):
            self.pixel_vqgan = VQGANConfig(**self.pixel_vqgan)
        if self.decoder_head == "proxy":
            if self.pixel_vqgan is None:
                raise ValueError("decoder_head 'proxy' needs pixel_vqgan")
            if self.pixel_vqgan.grid_size != self.grid_size:
                raise ValueError(
                    f"proxy codes are on a {self.pixel_vqgan.grid_size}^2 grid but the decoder predicts "
                    f"{self.grid_size}^2 patches: make image_size/patch_size equal the VQGAN's grid"
                )
        else:
            self.pixel_vqgan = None


@dataclass
class GeneratorConfig:
    """MaskGIT generator over a tokenizer's ids: "bert" (ImageBert, L-32/B-64) or "uvit" (S-128).

    Vocabulary: 0..codebook_size-1 image tokens, codebook_size = mask, codebook_size+1+c = class c,
    codebook_size+1+num_classes = the null class of classifier-free guidance.
    """

    kind = "generator"
    arch: str = "bert"
    seq_len: int = 32
    codebook_size: int = 4096
    num_classes: int = 1000
    hidden: int = 768
    depth: int = 24
    heads: int = 16
    intermediate: int = 3072
    dropout: float = 0.1
    attn_dropout: float = 0.1
    # sampling settings the generator was tuned for (the manifest's defaults)
    num_steps: int = 8
    temperature: float = 9.5
    guidance_scale: float = 4.5
    guidance_schedule: str = "linear"

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def null_class_id(self) -> int:
        """Class index (before the vocabulary shift) of the unconditional pass."""
        return self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 2

    def __post_init__(self):
        if self.arch not in ("bert", "uvit"):
            raise ValueError(f"arch must be 'bert' or 'uvit', not {self.arch!r}")
        if self.guidance_schedule not in SCHEDULES:
            raise ValueError(f"unknown guidance_schedule {self.guidance_schedule!r}")


@dataclass
class ClassifierConfig:
    """The small CNN classifier whose features give FID/IS and the perceptual loss (32x32 RGB input)."""

    kind = "fmnist-classifier"
    num_classes: int = 10
    widths: tuple[int, int, int] = (32, 64, 128)
    embed_dim: int = 256


CONFIG_KINDS = {c.kind: c for c in (TiTokConfig, VQGANConfig, GeneratorConfig, ClassifierConfig)}
ModelConfig = TiTokConfig | VQGANConfig | GeneratorConfig | ClassifierConfig


def config_to_dict(config: ModelConfig) -> dict:
    """JSON-ready dict with the config's kind, so ``config_from_dict`` can rebuild it."""
    return {"kind": config.kind, **asdict(config)}


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of ``config_to_dict``; unknown keys are an error, not silently dropped."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(CONFIG_KINDS)}")
    cls = CONFIG_KINDS[kind]
    strict_fields(cls, data, f"{kind} config keys")
    for key in ("channel_mult", "widths"):  # JSON has lists; the configs hold tuples
        if key in data:
            data[key] = tuple(data[key])
    if isinstance(data.get("pixel_vqgan"), dict):
        sub = dict(data["pixel_vqgan"])
        sub.pop("kind", None)
        sub["channel_mult"] = tuple(sub.get("channel_mult", VQGANConfig.channel_mult))
        data["pixel_vqgan"] = VQGANConfig(**sub)
    return cls(**data)


def check_pair(tokenizer: ModelConfig, generator: ModelConfig) -> None:
    """A generator must predict exactly its tokenizer's ids: same sequence length and codebook."""
    if not isinstance(tokenizer, (TiTokConfig, VQGANConfig)):
        raise ValueError(f"the tokenizer is a {type(tokenizer).__name__}, not a TiTok or a MaskGIT-VQGAN")
    if not isinstance(generator, GeneratorConfig):
        raise ValueError(f"the generator is a {type(generator).__name__}, not a MaskGIT generator")
    n, k = tokenizer.num_tokens, tokenizer.codebook_size
    if (generator.seq_len, generator.codebook_size) != (n, k):
        raise ValueError(
            f"generator expects {generator.seq_len} tokens from a {generator.codebook_size}-code book, but the "
            f"tokenizer gives {n} tokens from {k} codes: the pair does not fit"
        )
