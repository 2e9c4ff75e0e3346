"""Model core: released layouts, the call surface, the quantizer, checkpoints and the importer."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.checkpoint import (
    CheckpointError,
    import_released,
    load_checkpoint,
    preset_for_released_file,
    save_checkpoint,
)
from training.models import (
    ClassifierConfig,
    GeneratorConfig,
    TiTokConfig,
    VQGANConfig,
    build_model,
    check_pair,
    config_from_dict,
    get_config,
)
from training.models.quantizer import VectorQuantizer

# the released checkpoints' keys and shapes (every tensor of the published .bin files, listed once)
REFERENCE = Path(__file__).resolve().parent / "data" / "official_titok_state_dicts.json"
RELEASED = {
    "TiTok-L-32 tokenizer": "titok-l-32",
    "TiTok-B-64 tokenizer": "titok-b-64",
    "TiTok-S-128 tokenizer": "titok-s-128",
    "TiTok-L-32 generator": "titok-l-32-generator",
    "TiTok-B-64 generator": "titok-b-64-generator",
    "TiTok-S-128 generator": "titok-s-128-generator",
    "MaskGIT-VQGAN (PretrainedTokenizer, maskgit-vqgan-imagenet-f16-256.bin)": "maskgit-vqgan",
}

# reduced copies of the paper architectures: same structure, tiny sizes, so they run in milliseconds
TINY_TITOK = TiTokConfig(
    image_size=32,
    patch_size=4,
    width=32,
    depth=1,
    heads=2,
    num_latent_tokens=8,
    codebook_size=64,
    legacy_reshape=True,
    decoder_head="proxy",
    pixel_vqgan=VQGANConfig(
        image_size=32, hidden=32, channel_mult=(1, 1, 2), num_res_blocks=1, z_channels=16, codebook_size=32
    ),
)
TINY_BERT = GeneratorConfig(
    arch="bert", seq_len=8, codebook_size=16, num_classes=3, hidden=32, depth=2, heads=4, intermediate=64
)


@pytest.fixture(scope="module")
def reference():
    # committed with the tests: a missing file is a broken checkout, not a reason to skip
    assert REFERENCE.is_file(), f"the released layouts are missing: {REFERENCE}"
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("name", list(RELEASED))
def test_state_dict_matches_released_layout(reference, name):
    """Every key and shape of the released checkpoint, no more, no fewer (built on the meta device)."""
    with torch.device("meta"):
        model = build_model(RELEASED[name])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = reference[name]["state_dict"]
    assert sorted(set(theirs) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(theirs)) == [], "unexpected keys"
    assert {k: s for k, s in ours.items() if theirs[k] != s} == {}, "shape mismatches"
    assert sum(v.numel() for v in model.state_dict().values()) == reference[name]["num_params"]


@pytest.mark.slow
def test_paper_io_shapes(reference):
    """A reduced TiTok-L-32 (1 layer, narrow) at 256x256 gives the released models' I/O shapes."""
    cfg = replace(get_config("titok-l-32"), width=64, depth=1, heads=2)
    model = build_model(cfg).eval()
    io = reference["TiTok-L-32 tokenizer"]["io_shapes"]
    images = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        z = model.encode_latents(images)
        logits, info = model(images)
        decoded = model.decode_tokens(info["indices"])
    assert list(z.shape) == io["z_quantized"]
    assert list(info["indices"].shape) == [1, io["min_encoding_indices"][-1]]
    assert list(logits.shape) == io["titok_decoder_output(proxy-code logits)"]
    assert list(decoded.shape) == io["decode_tokens_output"]


@pytest.mark.parametrize("head,grid", [("pixel", False), ("proxy", False), ("pixel", True)])
def test_tokenizer_call_surface(head, grid):
    cfg = replace(TINY_TITOK, decoder_head=head, grid_tokens=grid, legacy_reshape=False)
    model = build_model(cfg).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        ids = model.encode(images)
        out = model.decode_tokens(ids)
        assert torch.equal(ids, model.encode(images.float() / 255)), "uint8 and [0,1] float inputs must agree"
    assert ids.shape == (3, cfg.num_tokens) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < cfg.codebook_size
    assert out.shape == (3, 3, 32, 32) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_grid_variant_keeps_the_patch_grid():
    cfg = replace(TINY_TITOK, patch_size=8, grid_tokens=True, decoder_head="pixel")
    assert cfg.num_tokens == 16
    model = build_model(cfg)
    assert not hasattr(model, "latent_tokens")
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_encode_is_deterministic_and_matches_forward():
    model = build_model(TINY_TITOK).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        a, b = model.encode(images), model.encode(images)
        _, info = model(images)
    assert torch.equal(a, b)
    assert torch.equal(a, info["indices"])


def test_legacy_reshape_is_a_memory_reshape():
    """The released encoder reshapes (B, N, W) to (B, W, N, 1) without transposing; ours does the same."""
    model = build_model(TINY_TITOK).eval()
    enc, b = model.encoder, 2
    seen = {}
    enc.ln_post.register_forward_hook(lambda m, i, o: seen.setdefault("latents", o))
    with torch.inference_mode():
        z = model.encode_latents(torch.rand(b, 3, 32, 32))
        lat = seen["latents"]  # (B, N, W)
        n, w = lat.shape[1], lat.shape[2]
        expected = enc.conv_out(lat.reshape(b, w, n, 1)).reshape(b, -1, 1, n)
        transposed = enc.conv_out(lat.transpose(1, 2).unsqueeze(-1)).reshape(b, -1, 1, n)
    assert torch.equal(z, expected)
    assert not torch.allclose(z, transposed)


# ---------------------------------------------------------------------------------------------------
# Quantizer
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [True, False])
def test_quantizer_indices_in_range_and_nearest(l2):
    torch.manual_seed(0)
    vq = VectorQuantizer(50, 6, use_l2_norm=l2)
    z = torch.randn(3, 6, 1, 7)
    zq, idx, loss = vq(z)
    assert idx.shape == (3, 1, 7) and int(idx.min()) >= 0 and int(idx.max()) < 50
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    if l2:  # on the unit sphere, nearest == most similar direction
        brute = (F.normalize(flat, dim=-1) @ F.normalize(vq.embedding.weight, dim=-1).T).argmax(1)
    else:
        brute = torch.cdist(flat, vq.embedding.weight).argmin(1)
    assert torch.equal(idx.flatten(), brute)
    assert torch.allclose(zq.permute(0, 2, 3, 1).reshape(-1, 6), vq.lookup(idx.flatten()), atol=1e-6)
    assert loss.item() > 0


def test_quantizer_straight_through_gradient():
    """d(zq)/d(z) is the identity (on the normalised z in l2 mode): the codebook choice passes no gradient."""
    torch.manual_seed(0)
    w = torch.randn(2, 6, 1, 5)
    z = torch.randn(2, 6, 1, 5, requires_grad=True)
    zq, _, _ = VectorQuantizer(40, 6, use_l2_norm=False)(z)
    (zq * w).sum().backward()
    assert torch.allclose(z.grad, w)

    z2 = z.detach().clone().requires_grad_(True)
    zq2, _, _ = VectorQuantizer(40, 6, use_l2_norm=True)(z2)
    (zq2 * w).sum().backward()
    z3 = z.detach().clone().requires_grad_(True)
    (F.normalize(z3, dim=1) * w).sum().backward()
    assert torch.allclose(z2.grad, z3.grad, atol=1e-6)


def test_quantizer_loss_gradients_reach_encoder_and_codebook():
    vq = VectorQuantizer(20, 4, use_l2_norm=True)
    z = torch.randn(1, 4, 1, 9, requires_grad=True)
    _, _, loss = vq(z)
    loss.backward()
    assert z.grad.abs().sum() > 0 and vq.embedding.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "uvit"])
def test_generator_call_surface(arch):
    cfg = replace(TINY_BERT, arch=arch)
    model = build_model(cfg).eval()
    tokens = torch.randint(0, cfg.codebook_size, (4, cfg.seq_len))
    tokens[:, ::2] = cfg.mask_id
    labels = torch.tensor([0, 1, 2, cfg.null_class_id])
    with torch.inference_mode():
        logits = model(tokens, labels)
    assert logits.shape == (4, cfg.seq_len, cfg.codebook_size)
    with torch.inference_mode():  # the class token matters
        assert not torch.allclose(model(tokens[:1], labels[:1]), model(tokens[:1], labels[3:]))


def test_bert_generator_matches_transformers_bert():
    """Our BERT layout (post-LN, eps 1e-12, exact GELU, token type 0) equals transformers.BertModel."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = TINY_BERT
    ours = build_model(cfg).eval()
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.depth,
            num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate,
            hidden_act="gelu",
            max_position_embeddings=cfg.seq_len + 1,
            layer_norm_eps=1e-12,
            type_vocab_size=2,
        ),
        add_pooling_layer=False,
    ).eval()
    state = {k.removeprefix("model."): v for k, v in ours.state_dict().items() if not k.startswith("model.lm_head")}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    assert unexpected == [] and all("position_ids" in k for k in missing)
    tokens = torch.randint(0, cfg.codebook_size + 1, (3, cfg.seq_len))
    labels = torch.tensor([0, 2, cfg.null_class_id])
    ids = torch.cat([(labels + cfg.codebook_size + 1)[:, None], tokens], dim=1)
    with torch.inference_mode():
        expected = ours.model.lm_head(bert(input_ids=ids).last_hidden_state)[:, 1:]
        got = ours(tokens, labels)
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Checkpoints and the importer
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg", [TINY_TITOK, TINY_BERT, replace(TINY_BERT, arch="uvit"), TINY_TITOK.pixel_vqgan, ClassifierConfig()]
)
def test_checkpoint_round_trip_is_bit_exact(tmp_path, cfg):
    model = build_model(cfg)
    folder = save_checkpoint(model, tmp_path / "ckpt", metadata={"step": 7})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(folder)
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)
    folder = save_checkpoint(build_model(TINY_BERT), tmp_path / "gen")
    with pytest.raises(CheckpointError, match="holds a generator model, not a fmnist-classifier"):
        load_checkpoint(folder, kind="fmnist-classifier")


def test_config_dicts_are_strict():
    with pytest.raises(ValueError, match=r"unknown generator config keys: \['hiden'\]"):
        config_from_dict({"kind": "generator", "hiden": 3})
    with pytest.raises(ValueError, match="unknown model kind"):
        config_from_dict({"kind": "resnet"})
    assert config_from_dict({"kind": "fmnist-classifier"}) == ClassifierConfig()  # the first classifier files


def test_pair_check_names_both_sides():
    check_pair(TINY_TITOK, replace(TINY_BERT, seq_len=TINY_TITOK.num_tokens, codebook_size=TINY_TITOK.codebook_size))
    vqgan = TINY_TITOK.pixel_vqgan
    check_pair(vqgan, replace(TINY_BERT, seq_len=vqgan.num_tokens, codebook_size=vqgan.codebook_size))
    with pytest.raises(ValueError, match=r"generator expects \d+ tokens .* tokenizer gives 8 tokens"):
        check_pair(TINY_TITOK, replace(TINY_BERT, seq_len=9))
    with pytest.raises(ValueError, match="not a MaskGIT generator"):
        check_pair(TINY_TITOK, TINY_TITOK)


def test_import_released_file_strict(tmp_path):
    """A released-style .bin (pickled state_dict, old position_ids buffer included) loads strictly."""
    src = build_model(TINY_BERT)
    state = dict(src.state_dict())
    state["model.embeddings.position_ids"] = torch.arange(TINY_BERT.seq_len + 1)[None]
    path = tmp_path / "generator_titok_l32.bin"
    torch.save(state, path)
    model = import_released(path, preset=TINY_BERT)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())


def test_import_released_wrong_file_names_keys(tmp_path):
    path = tmp_path / "tokenizer_titok_l32.bin"
    torch.save(build_model(TINY_BERT).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        import_released(path, preset=TINY_TITOK)
    msg = str(err.value)
    n_ours, n_theirs = len(build_model(TINY_TITOK).state_dict()), len(build_model(TINY_BERT).state_dict())
    assert f"{n_ours} missing keys: decoder." in msg
    assert f"{n_theirs} unexpected keys: model.embeddings." in msg


def test_import_released_wrong_shapes(tmp_path):
    path = tmp_path / "tokenizer.bin"
    torch.save(build_model(replace(TINY_TITOK, num_latent_tokens=4)).state_dict(), path)
    with pytest.raises(CheckpointError, match="wrong shape keys: .*latent_tokens"):
        import_released(path, preset=TINY_TITOK)


@pytest.mark.parametrize(
    "name,preset",
    [
        ("tokenizer_titok_l32.bin", "titok-l-32"),
        ("tokenizer_titok_b64.bin", "titok-b-64"),
        ("generator_titok_s128.bin", "titok-s-128-generator"),
        ("maskgit-vqgan-imagenet-f16-256.bin", "maskgit-vqgan"),
    ],
)
def test_released_file_names(name, preset):
    assert preset_for_released_file(name) == preset


# ---------------------------------------------------------------------------------------------------
# The stack trains end to end
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_tokenizer_overfits_real_images():
    """A tiny single-stage TiTok memorises 16 real Fashion-MNIST images in well under a minute of CPU."""
    from training.data import load_fashion_mnist
    from training.metrics import psnr

    torch.manual_seed(0)
    images, _ = load_fashion_mnist("train", limit=16)
    x = images.float() / 255
    cfg = TiTokConfig(
        image_size=32,
        patch_size=8,
        width=64,
        depth=2,
        heads=4,
        num_latent_tokens=16,
        codebook_size=256,
        decoder_head="pixel",
    )
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)

    def quality() -> float:
        model.eval()
        with torch.inference_mode():
            return float(psnr(model.decode_tokens(model.encode(images)), x).mean())

    start = quality()
    model.train()
    usage = torch.zeros(cfg.codebook_size)
    for step in range(300):
        recon, info = model(x)
        usage += torch.bincount(info["indices"].flatten(), minlength=cfg.codebook_size)
        loss = F.mse_loss(recon, x) + info["quantizer_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:  # keep the codebook alive, as the training recipes do
            z = model.encode_latents(x).detach()
            model.quantize.restart_unused(usage, z.permute(0, 2, 3, 1).reshape(-1, cfg.token_size))
            usage.zero_()
    end = quality()
    assert end > start + 8.0 and end > 18.0, f"PSNR went from {start:.2f} dB to only {end:.2f} dB"


def test_restart_unused_codes_moves_only_dead_codes():
    vq = VectorQuantizer(10, 4, use_l2_norm=False)
    before = vq.embedding.weight.detach().clone()
    usage = torch.tensor([3, 0, 1, 0, 0, 2, 1, 1, 1, 1])
    z = torch.randn(5, 4)
    assert vq.restart_unused(usage, z) == 3
    after = vq.embedding.weight.detach()
    assert torch.equal(after[usage > 0], before[usage > 0])
    assert all(any(torch.equal(after[i], row) for row in z) for i in (1, 3, 4))
