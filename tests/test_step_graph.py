"""Sampler version 2: the counter-based hash, the step graph against the numpy reference and PyTorch, seeded items
alone and in any batch through the gateway, and manifests of other sampler versions refused."""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import FAMILY, ROOT
from titok_core.manifest import Manifest, read_manifest
from titok_core.sampler import (
    STEP_INPUTS,
    Generation,
    SamplingSettings,
    advance,
    apply,
    build_batch,
    generate,
    mix,
    row_keys,
    sample,
    step_inputs,
    uniforms,
    vary,
)

# ---------------------------------------------------------------------------------------------------
# The hash
# ---------------------------------------------------------------------------------------------------


def test_the_hash_is_pinned_and_exact_in_int64():
    # these integers define every seeded output of sampler 2: a change here is a new sampler version
    seeds = np.array([0, 1, 2**32, 2**63 - 1], dtype=np.int64)
    keys = row_keys(seeds, np.array([0, 0, 7, 63], dtype=np.int64))
    assert keys.tolist() == [2649189541, 3611952303, 3353730633, 583568073]
    assert keys.dtype == np.int64 and ((keys >= 0) & (keys < 2**32)).all()
    # the same integers from Python's unbounded ints: nothing overflowed int64 on the way
    assert [row_keys(int(s), int(t)) for s, t in zip(seeds, (0, 0, 7, 63), strict=True)] == keys.tolist()
    assert mix(np.arange(4, dtype=np.int64)).tolist() == [mix(i) for i in range(4)]


def test_the_hash_agrees_in_pytorch():
    torch = pytest.importorskip("torch")
    from training.sampling import uniforms as torch_uniforms

    rng = np.random.default_rng(0)
    seeds, steps = rng.integers(0, 2**63, (64, 1)), rng.integers(0, 64, (64, 1))
    keys = row_keys(seeds, steps)
    assert np.array_equal(row_keys(torch.from_numpy(seeds), torch.from_numpy(steps)).numpy(), keys)
    for ours, theirs in zip(uniforms(keys, 32), torch_uniforms(torch.from_numpy(keys), 32), strict=True):
        assert np.array_equal(ours, theirs.numpy())


def test_uniforms_are_uniform_and_independent_of_their_neighbours():
    seeds = np.arange(4000, dtype=np.int64).reshape(-1, 1)
    u_token, u_conf = uniforms(row_keys(seeds, np.zeros_like(seeds)), 32)
    u_next, _ = uniforms(row_keys(seeds, np.ones_like(seeds)), 32)
    assert u_token.dtype == np.float32 and 0 < u_token.min() and u_token.max() < 1

    def chi2(a, b):  # per degree of freedom, 16 x 16 cells of the joint histogram
        counts = np.histogram2d(a.ravel(), b.ravel(), bins=16, range=[[0, 1], [0, 1]])[0]
        expected = counts.sum() / 256
        return ((counts - expected) ** 2 / expected).sum() / 255

    # ~1 for independent uniforms; 1.3 is about 5 standard deviations
    assert chi2(u_token[:, :-1], u_token[:, 1:]) < 1.3  # neighbouring positions
    assert chi2(u_token[:-1], u_token[1:]) < 1.3  # neighbouring seeds
    assert chi2(u_token, u_next) < 1.3  # the next step
    assert chi2(u_token, u_conf) < 1.3  # the two streams


def test_inverse_cdf_draws_follow_the_softmax():
    k, n, rows = 6, 32, 4000
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05, 1e-9], dtype=np.float32))
    cond = np.broadcast_to(logits, (rows, n, k)).copy()
    tokens = np.full((rows, n), k, dtype=np.int64)
    ones = np.ones((rows, 1), dtype=np.float32)
    seeds = np.arange(rows, dtype=np.int64).reshape(-1, 1)
    drawn = sample(cond, cond, tokens, seeds, 0 * seeds, 0 * ones, ones, ones, 0 * seeds)
    freq = np.bincount(drawn.ravel(), minlength=k) / drawn.size
    np.testing.assert_allclose(freq, [0.4, 0.3, 0.15, 0.1, 0.05, 0], atol=0.01)
    # temperature 0 is argmax
    cold = sample(cond, cond, tokens, seeds, 0 * seeds, 0 * ones, 0 * ones, ones, 0 * seeds)
    assert (cold == 0).all()


# ---------------------------------------------------------------------------------------------------
# The step graph of the shipped family: numpy reference, ONNX Runtime and PyTorch give the same tokens
# ---------------------------------------------------------------------------------------------------


def _settings():
    return [
        SamplingSettings(8, 4.0, "linear", 2.0),
        SamplingSettings(6, 3.0, "constant", 5.0, softmax_annealing=True),
        SamplingSettings(10, 5.0, "power-cosine", 3.0),
        SamplingSettings(4, 0.0, "constant", 0.0),
    ]


@pytest.fixture(scope="module")
def sessions(model_repository):
    manifest = read_manifest(model_repository, FAMILY)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def session(graph):
        return ort.InferenceSession(str(model_repository / manifest.graphs[graph].path), options)

    return manifest, session("generator"), session("step")


def test_the_step_graph_gives_the_reference_tokens_at_every_step(sessions):
    manifest, generator, step = sessions
    dims = dict(seq_len=manifest.num_tokens, codebook_size=manifest.codebook_size, num_classes=manifest.num_classes)
    settings = _settings()
    graph_gens = [Generation.start(i % 10, 100 + i, settings[i % 4], **dims) for i in range(12)]
    graph_gens[5].class_id = manifest.num_classes  # an unconditional one (as a variation may be)
    ref_gens = [
        Generation(g.tokens.copy(), g.seed, g.class_id, g.settings, g.mask_id, g.null_class_id) for g in graph_gens
    ]

    def logits(tokens, classes):
        return generator.run(None, {"tokens": tokens, "class_ids": classes.reshape(-1, 1)})[0]

    while pending := [g for g in graph_gens if not g.done]:
        inputs = step_inputs(pending)
        apply(pending, step.run(None, dict(zip(STEP_INPUTS, inputs, strict=True)))[0])
        ref_pending = [g for g in ref_gens if not g.done]
        tokens, classes, rows = build_batch(ref_pending)
        advance(ref_pending, logits(tokens, classes), rows)
        for g, r in zip(pending, ref_pending, strict=True):
            assert np.array_equal(g.tokens, r.tokens), (g.class_id, g.seed, g.step)
    assert all((g.tokens < manifest.codebook_size).all() for g in graph_gens)


def test_pytorch_step_gives_the_graph_tokens(sessions):
    torch = pytest.importorskip("torch")
    from training.checkpoint import load_checkpoint
    from training.sampling import MaskGITStep

    manifest, _, step = sessions
    path = ROOT / "checkpoints" / "titok-fmnist" / "generator"
    if not path.is_dir():
        pytest.skip("the shipped generator checkpoint is not in this checkout")
    module = MaskGITStep(load_checkpoint(path).eval())
    dims = dict(seq_len=manifest.num_tokens, codebook_size=manifest.codebook_size, num_classes=manifest.num_classes)
    gens = [Generation.start(i % 10, 7 * i, _settings()[i % 4], **dims) for i in range(8)]
    agree = total = 0
    while pending := [g for g in gens if not g.done]:
        inputs = step_inputs(pending)
        graph = step.run(None, dict(zip(STEP_INPUTS, inputs, strict=True)))[0]
        with torch.no_grad():
            eager = module(*map(torch.from_numpy, inputs)).numpy()
        agree, total = agree + int((graph == eager).sum()), total + graph.size
        apply(pending, graph)
    # the logits differ in their last bits (ONNX Runtime vs PyTorch kernels, ~1e-6): a token moves only if a
    # uniform lies that close to a CDF step or two confidences are that close
    assert agree / total >= 0.999, agree / total


# ---------------------------------------------------------------------------------------------------
# Through the gateway: a seeded item gives the same tokens alone and in any batch, the reference's tokens
# ---------------------------------------------------------------------------------------------------


def _post(url, body):
    return httpx.post(f"{url}/v1/generate", json={"return_tokens": True, **body}, timeout=120)


def test_a_seeded_item_is_the_same_alone_in_any_batch_and_the_references(gateway, sessions):
    manifest, generator, _ = sessions
    mine = {"class_labels": [4], "seed": 777, "num_steps": 6, "guidance_scale": 3.0, "temperature": 2.5}
    alone = _post(gateway.url, mine).json()["images"][0]
    # at position 3 of a request of 5 (seed 774 + 3), beside batch-mates at other steps and settings
    crowd = [
        {"class_labels": [i % 10], "n": 1 + i % 4, "seed": 50 * i, "num_steps": 2 + i % 9, "guidance_schedule": s}
        for i, s in zip(range(12), ["constant", "linear", "power-cosine"] * 4, strict=True)
    ]
    inside = {**mine, "n": 5, "seed": 774}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: _post(gateway.url, b), crowd[:6] + [inside] + crowd[6:]))
    assert all(r.status_code == 200 for r in answers)
    crowded = answers[6].json()["images"][3]
    assert crowded["seed"] == 777 and crowded["tokens"] == alone["tokens"]
    assert crowded["b64_json"] == alone["b64_json"]

    def logits(tokens, classes):
        return generator.run(None, {"tokens": tokens, "class_ids": classes.reshape(-1, 1)})[0]

    settings = SamplingSettings(6, 3.0, manifest.sampling.guidance_schedule, 2.5, manifest.sampling.softmax_annealing)
    dims = dict(seq_len=manifest.num_tokens, codebook_size=manifest.codebook_size, num_classes=manifest.num_classes)
    reference = generate(logits, [4], [777], settings=settings, **dims)[0]
    assert alone["tokens"] == reference.tolist()


def test_variations_agree_with_the_reference(gateway, sessions):
    manifest, generator, _ = sessions
    source = _post(gateway.url, {"class_labels": [2], "seed": 5}).json()["images"][0]["tokens"]
    body = {"tokens": source, "mask": list(range(0, 32, 2)), "seed": 9, "class_labels": 7, "return_tokens": True}
    r = httpx.post(f"{gateway.url}/v1/variations", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()["images"][0]["tokens"]

    def logits(tokens, classes):
        return generator.run(None, {"tokens": tokens, "class_ids": classes.reshape(-1, 1)})[0]

    dims = dict(codebook_size=manifest.codebook_size, num_classes=manifest.num_classes)
    expected = vary(logits, np.array([source]), [list(range(0, 32, 2))], [7], [9], settings=manifest.sampling, **dims)
    assert got == expected[0].tolist()


# ---------------------------------------------------------------------------------------------------
# Manifests of another sampler
# ---------------------------------------------------------------------------------------------------


def _manifest_dict(model_repository) -> dict:
    return json.loads((model_repository / f"{FAMILY}.manifest.json").read_text())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("sampler"), "sampler 1 (a manifest written before"),
        (lambda d: d.update(sampler=1), "sampler 1"),
        (lambda d: d.update(sampler=3), "sampler 3 is not one this gateway knows"),
    ],
)
def test_a_manifest_of_another_sampler_is_refused(model_repository, change, message):
    data = _manifest_dict(model_repository)
    assert Manifest.from_dict(data).sampler == 2
    change(data)
    with pytest.raises(ValueError, match="sampler") as refused:
        Manifest.from_dict(data)
    assert message in str(refused.value)


def test_the_gateway_refuses_to_start_on_an_old_manifest(model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo, ignore=shutil.ignore_patterns("*.onnx"))
    data = _manifest_dict(model_repository)
    del data["sampler"], data["graphs"]["step"]  # as written before sampler 2
    (repo / f"{FAMILY}.manifest.json").write_text(json.dumps(data))
    env = {"TITOK_MODEL_REPOSITORY": str(repo), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "sampler 1" in r.stderr and "re-export" in r.stderr, r.stderr
