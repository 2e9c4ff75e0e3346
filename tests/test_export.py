"""Export: ONNX graphs checked against PyTorch, the Triton repository, its manifest, the Python-backend twin, TensorRT.

Four families share one repository: three tiny ones (pixel head, proxy head with a small VQGAN, 2D grid) and a
reduced copy of the paper architecture (TiTok-L-32 at 256x256 with its real MaskGIT-VQGAN pixel decoder, one layer,
narrow; the L-32 generator with one layer). The paper decoder is verified at batch 1 and 3 only: on one CPU core
it takes about 3 s per image and side, so batch 32 would take minutes.
"""

import dataclasses
import importlib.util
import json
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

import export.verify
from export.__main__ import main
from export.build import build_family
from export.onnx_graphs import export_decoder, family_signatures_of, graph_io, graph_problems
from export.sources import class_names
from export.tensorrt import UNAVAILABLE
from export.triton_repo import CONFIG_FILE, GPU_CONFIG_FILE
from export.twin import write_twin
from export.verify import ort_session, report_markdown
from titok_core.manifest import checksum_problems, manifest_path, read_manifest, sha256
from training.checkpoint import save_checkpoint
from training.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from training.models import GeneratorConfig, TiTokConfig, VQGANConfig, build_model, check_pair, get_config

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(image_size=32, width=32, depth=1, heads=2, codebook_size=64)
TINY_GEN = dict(codebook_size=64, num_classes=10, hidden=32, heads=2, intermediate=64)
FAMILIES = {
    # name: (tokenizer config, generator config, batch sizes, decoder batch sizes)
    "pixel": (
        TiTokConfig(**TINY, patch_size=8, num_latent_tokens=8, decoder_head="pixel"),
        GeneratorConfig(arch="bert", seq_len=8, depth=1, **TINY_GEN),
        (1, 3, 32),
        None,
    ),
    "proxy": (
        TiTokConfig(
            **TINY,
            patch_size=4,
            num_latent_tokens=8,
            decoder_head="proxy",
            pixel_vqgan=VQGANConfig(
                image_size=32, hidden=32, channel_mult=(1, 1, 2), num_res_blocks=1, z_channels=16, codebook_size=32
            ),
        ),
        GeneratorConfig(arch="uvit", seq_len=8, depth=2, **TINY_GEN),
        (1, 3, 32),
        None,
    ),
    "grid": (
        TiTokConfig(**TINY, patch_size=8, decoder_head="pixel", grid_tokens=True),
        GeneratorConfig(arch="bert", seq_len=16, depth=1, **TINY_GEN),
        (1, 3, 32),
        None,
    ),
    "paper": (
        replace(get_config("titok-l-32"), width=64, depth=1, heads=2),
        replace(get_config("titok-l-32-generator"), depth=1),
        (1, 3, 32),
        (1, 3),
    ),
}
ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
}
HAVE_FMNIST = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: (build_model(t).eval(), build_model(g).eval()) for name, (t, g, _, _) in FAMILIES.items()}


@pytest.fixture(scope="module")
def checkpoints(models, tmp_path_factory):
    """The pixel family saved as checkpoint folders, for the command line; the generator records its classes."""
    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer, generator = models["pixel"]
    recorded = {"class_names": list(FASHION_MNIST_CLASSES)}  # as training writes them from the data set
    return save_checkpoint(tokenizer, root / "tokenizer"), save_checkpoint(generator, root / "generator", recorded)


@pytest.fixture(scope="module")
def repo(models, checkpoints, tmp_path_factory):
    """All four families in one repository: the pixel one through the command line, the others in process."""
    out = tmp_path_factory.mktemp("model_repository")
    tok_dir, gen_dir = checkpoints
    argv = ["build", "--tokenizer", str(tok_dir), "--generator", str(gen_dir), "--family", "pixel", "--out", str(out)]
    assert main([*argv, "--intra-op-threads", "1"]) == 0
    reports = {"pixel": read_manifest(out, "pixel").verification}
    for name, (_, _, sizes, decoder_sizes) in FAMILIES.items():
        if name != "pixel":
            tokenizer, generator = models[name]
            result = build_family(tokenizer, generator, out, name, batch_sizes=sizes, decoder_batch_sizes=decoder_sizes)
            assert result.ok, report_markdown(result.report)
            reports[name] = result.report
    return out, reports


# ---------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.slow
def test_verify_passes_at_every_batch_size(repo, family):
    _, reports = repo
    report = reports[family]
    print(f"\n{family}\n{report_markdown(report)}")
    assert report["ok"]
    _, _, sizes, decoder_sizes = FAMILIES[family]
    seen = {(c["graph"], c["batch"]) for c in report["checks"]}
    for b in sizes:
        assert {("encoder", b), ("generator", b), ("step", b)} <= seen
    for b in decoder_sizes or sizes:
        assert {("decoder (float32)", b), ("decoder (uint8)", b)} <= seen
    assert 0.99 <= report["token_agreement"] <= 1.0
    fmnist = HAVE_FMNIST and FAMILIES[family][0].image_size == 32
    expected = "Fashion-MNIST test images" if fmnist else "random uint8 images"
    assert report["inputs"] == expected


@pytest.mark.slow
def test_dynamic_batch_in_onnxruntime(repo):
    """Batch 1, 3 and 32 through every graph of a family, with the declared dtypes and shapes."""
    out, _ = repo
    manifest = read_manifest(out, "pixel")
    for entry in manifest.graphs.values():
        session = ort_session(out / entry.path)
        for b in (1, 3, 32):
            feeds = {t.name: np.zeros((b, *t.dims), dtype=t.dtype) for t in entry.signature.inputs}
            results = session.run(None, feeds)
            for got, spec in zip(results, entry.signature.outputs, strict=True):
                assert got.dtype == np.dtype(spec.dtype) and got.shape == (b, *spec.dims)


def test_build_refuses_a_failed_verification(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export.verify, "GENERATOR_TOL", -1.0)  # no generator can pass
    tok_dir, gen_dir = checkpoints
    argv = [
        "build",
        "--tokenizer",
        str(tok_dir),
        "--generator",
        str(gen_dir),
        "--family",
        "bad",
        "--out",
        str(tmp_path),
    ]
    argv += ["--batch-sizes", "1,3"]
    assert main(argv) == 1
    assert "verification failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tie_gaps_measure_the_distance_difference(models):
    """Swapping a token for its runner-up gives the relative gap between the two codes' distances."""
    tokenizer, _ = models["pixel"]
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        z = tokenizer.encode_latents(nchw)[0, :, 0, 0].double()  # token 0's latent
        codes = tokenizer.quantize.codebook().double()
        ids = tokenizer.encode(nchw).numpy()
    d = (torch.nn.functional.normalize(z, dim=0) - codes).pow(2).sum(-1)  # its distance to every code
    first, second = d.argsort()[:2].tolist()
    assert ids[0, 0] == first
    other = ids.copy()
    other[0, 0] = second
    gaps = export.verify.tie_gaps(tokenizer, images, ids, other)
    assert gaps.shape == (1,) and gaps[0] == pytest.approx(float((d[second] - d[first]) / d[first]), rel=1e-6)


def test_encoder_check_passes_a_mismatch_only_at_a_near_tie(models, monkeypatch):
    """A differing token fails the check unless its two codes are a near tie (here: by widening the tie band)."""
    tokenizer, _ = models["pixel"]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ids = tokenizer.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    other = ids.copy()
    other[1, 2] = (ids[1, 2] + 1) % 64
    session = types.SimpleNamespace(run=lambda outputs, feeds: [other[: len(feeds["images"])]])
    (check,), same, total = export.verify._check_encoder(tokenizer, session, images, ids, [3])
    gap = export.verify.tie_gaps(tokenizer, images, ids, other)[0]
    assert not check.ok and check.value == same / total == 23 / 24 and "1 differ" in check.note and gap > 1e-4
    monkeypatch.setattr(export.verify, "TIE_GAP", 2 * gap)
    (check,), _, _ = export.verify._check_encoder(tokenizer, session, images, ids, [3])
    assert check.ok


# ---------------------------------------------------------------------------------------------------
# The repository: configs, graphs, manifests
# ---------------------------------------------------------------------------------------------------


def _configs(folder: Path) -> dict[str, mc.ModelConfig]:
    return {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in folder.glob(f"*/{CONFIG_FILE}")}


@pytest.mark.slow
def test_configs_parse_and_agree_with_their_graphs(repo):
    out, _ = repo
    configs = _configs(out)
    assert sorted(configs) == sorted(f"{f}_{g}" for f in FAMILIES for g in ("encoder", "decoder", "generator", "step"))
    for name, config in configs.items():
        assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
        assert config.version_policy.latest.num_versions == 1
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        policy = config.dynamic_batching.default_queue_policy
        assert (policy.max_queue_size, policy.default_timeout_microseconds) == (64, 30_000_000)
        assert policy.allow_timeout_override and policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 64]
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
        assert not config.HasField("optimization")
        # the GPU variant (tritonserver --model-config-name=gpu): the same model on KIND_GPU with TensorRT fp16
        gpu = text_format.Parse((out / name / GPU_CONFIG_FILE).read_text(), mc.ModelConfig())
        assert [(g.count, g.kind) for g in gpu.instance_group] == [(1, mc.ModelInstanceGroup.KIND_GPU)]
        assert [a.name for a in gpu.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]
        for field in ("instance_group", "optimization"):
            gpu.ClearField(field)
        cpu = mc.ModelConfig()
        cpu.CopyFrom(config)
        cpu.ClearField("instance_group")
        assert gpu == cpu
        threads = {"intra_op_thread_count": "1"} if name.startswith("pixel_") else {}
        assert {k: v.string_value for k, v in config.parameters.items()} == threads
        io = graph_io(out / name / "1" / "model.onnx")
        for declared, actual in ((config.input, io["inputs"]), (config.output, io["outputs"])):
            assert [(t.name, t.data_type, tuple(t.dims)) for t in declared] == [
                (n, ONNX_TO_TRITON[dtype], dims[1:]) for n, dtype, dims in actual
            ]
            assert all(dims[0] == "batch" for _, _, dims in actual)
        assert [(w.name, w.batch_size) for w in config.model_warmup] == [("batch_1", 1), ("batch_64", 64)]
        for warmup in config.model_warmup:
            assert sorted(warmup.inputs) == sorted(t.name for t in config.input)
            for t in config.input:
                data = warmup.inputs[t.name]
                assert list(data.dims) == list(t.dims) and (data.zero_data or data.random_data)


def test_gpu_configs_ask_for_tensorrt_fp16(models, tmp_path):
    from export.triton_repo import TritonSettings, model_config

    tokenizer, _ = models["pixel"]
    signature = family_signatures_of(tokenizer)["encoder"]
    config = model_config("x_encoder", signature, TritonSettings(max_batch_size=8, instances=2, device="gpu"))
    parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    (accelerator,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    for kind in ("engine", "timing"):  # kept on the engine-cache volume, one folder per model
        assert accelerator.parameters[f"trt_{kind}_cache_enable"] == "1"
        assert accelerator.parameters[f"trt_{kind}_cache_path"] == "/engine-cache/x_encoder"
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    unbounded = model_config("x_encoder", signature, TritonSettings(max_queue_size=0, queue_timeout_us=0))
    assert not unbounded.dynamic_batching.HasField("default_queue_policy")  # Triton's default: no limit
    with pytest.raises(ValueError):
        TritonSettings(max_queue_size=-1)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.slow
def test_manifest_describes_the_family(repo, models, family):
    out, _ = repo
    manifest = json.loads(manifest_path(out, family).read_text())
    tokenizer, generator = models[family]
    tcfg, gcfg = tokenizer.config, generator.config
    assert manifest["family"] == family and manifest["version"] == 1 and manifest["max_batch_size"] == 64
    assert (manifest["image_size"], manifest["num_tokens"], manifest["codebook_size"]) == (
        tcfg.image_size,
        tcfg.num_tokens,
        tcfg.codebook_size,
    )
    assert manifest["mask_id"] == tcfg.codebook_size and manifest["null_class_id"] == gcfg.num_classes
    assert manifest["sampler"] == 2 and set(manifest["graphs"]) == {"encoder", "decoder", "generator", "step"}
    # the pixel family's generator checkpoint recorded its classes; the in-memory ones record none
    recorded = family == "pixel"
    expected_names = list(FASHION_MNIST_CLASSES) if recorded else [f"class_{i}" for i in range(gcfg.num_classes)]
    assert manifest["class_names"] == expected_names
    assert manifest["sampling"] == {
        "num_steps": gcfg.num_steps,
        "guidance_scale": gcfg.guidance_scale,
        "guidance_schedule": gcfg.guidance_schedule,
        "temperature": gcfg.temperature,
        "softmax_annealing": False,
    }
    assert manifest["sources"]["tokenizer"]["config"]["kind"] == "titok"
    assert manifest["export"]["torch"] == torch.__version__ and manifest["export"]["onnx"] == onnx.__version__
    assert manifest["verification"]["ok"]
    for graph, entry in manifest["graphs"].items():
        path = out / entry["path"]
        assert entry["sha256"] == sha256(path)
        assert graph_problems(path, family_signatures_of(tokenizer)[graph]) == []
    assert checksum_problems(out, read_manifest(out, family)) == []


@pytest.mark.slow
def test_manifest_records_checkpoint_sources(repo, checkpoints):
    out, _ = repo
    sources = read_manifest(out, "pixel").sources
    assert sources["tokenizer"]["path"] == checkpoints[0].name  # outside the working directory: the name alone
    assert sources["generator"]["format"] == "checkpoint"


def test_source_paths_are_portable(tmp_path, monkeypatch):
    """A manifest records its sources relative to the working directory (else by name), never a machine's absolute
    path; the shipped manifests too."""
    from export.sources import portable

    (tmp_path / "checkpoints" / "tok").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert portable(Path("checkpoints/tok")) == "checkpoints/tok"
    assert portable(tmp_path / "checkpoints" / "tok") == "checkpoints/tok"
    assert portable(Path("/elsewhere/tok")) == "tok"
    for manifest in (ROOT / "model_repository").glob("*.manifest.json"):
        for source in json.loads(manifest.read_text())["sources"].values():
            assert source["path"] is None or not Path(source["path"]).is_absolute(), (manifest, source["path"])


@pytest.mark.slow
def test_checksums_catch_a_changed_file(repo, tmp_path):
    out, _ = repo
    manifest = read_manifest(out, "pixel")
    graphs = {**manifest.graphs, "decoder": dataclasses.replace(manifest.graphs["decoder"], sha256="0" * 64)}
    manifest = dataclasses.replace(manifest, graphs=graphs)
    assert [p.split(":")[0] for p in checksum_problems(out, manifest)] == ["decoder"]


@pytest.mark.slow
def test_verify_command_checks_a_written_family(repo, checkpoints, capsys):
    out, _ = repo
    tok_dir, gen_dir = checkpoints
    argv = ["verify", "--repo", str(out), "--family", "pixel", "--tokenizer", str(tok_dir), "--generator", str(gen_dir)]
    assert main([*argv, "--batch-sizes", "1,3"]) == 0
    assert "Verification passed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# The Python-backend twin
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin(repo, tmp_path_factory):
    out, _ = repo
    folder = tmp_path_factory.mktemp("twin")
    write_twin(out, folder)
    return folder


@pytest.mark.slow
def test_twin_mirrors_the_repository(repo, twin):
    out, _ = repo
    real, mirror = _configs(out), _configs(twin)
    assert sorted(real) == sorted(mirror)
    for name, config in real.items():
        t = mirror[name]
        assert t.backend == "python" and not t.platform and not t.HasField("optimization")
        for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "version_policy"):
            assert getattr(t, field) == getattr(config, field), field
        assert [g.count for g in t.instance_group] == [g.count for g in config.instance_group]
        assert sha256(twin / name / "1" / "model.onnx") == sha256(out / name / "1" / "model.onnx")
        assert (twin / name / "1" / "model.py").is_file()
    for family in FAMILIES:
        assert manifest_path(twin, family).read_text() == manifest_path(out, family).read_text()


class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def _load_twin_model(path: Path, monkeypatch):
    """The twin's model.py with a stand-in for Triton's ``triton_python_backend_utils``."""
    utils = types.SimpleNamespace(
        Tensor=_FakeTensor,
        InferenceResponse=_FakeResponse,
        TritonError=str,
        get_input_tensor_by_name=lambda request, name: _FakeTensor(name, request[name]),
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("twin_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_twin_model_batches_requests_like_onnxruntime(twin, monkeypatch):
    """Requests of batch 1 and 3 run as one batch and come back split; a bad request fails alone."""
    folder = twin / "pixel_generator"
    model = _load_twin_model(folder / "1" / "model.py", monkeypatch).TritonPythonModel()
    config = json_format.MessageToJson(_configs(twin)["pixel_generator"], preserving_proto_field_name=True)
    model.initialize({"model_repository": str(folder), "model_version": "1", "model_config": config})
    assert model.session.get_session_options().intra_op_num_threads == 1  # from the config's parameters
    rng = np.random.default_rng(0)
    requests = [{"tokens": rng.integers(0, 65, (b, 8)), "class_ids": rng.integers(0, 11, (b, 1))} for b in (1, 3, 2)]
    session = ort_session(folder / "1" / "model.onnx")
    responses = model.execute(requests)
    assert len(responses) == 3
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        np.testing.assert_allclose(response.outputs["logits"], session.run(None, request)[0], atol=1e-5)
    requests[1]["tokens"][0, 0] = 10_000  # past the vocabulary: onnxruntime's Gather refuses it
    responses = model.execute(requests)
    assert [r.error is None for r in responses] == [True, False, True]
    assert "onnxruntime" in responses[1].error


# ---------------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorrt_fails_clearly_without_a_gpu(repo):
    if importlib.util.find_spec("tensorrt") is not None and Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU and TensorRT")
    out, _ = repo
    cmd = [sys.executable, "-m", "export", "tensorrt", "--repo", str(out), "--family", "pixel"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(UNAVAILABLE.format(""))
    assert not list(out.glob("*/1/model.plan"))


def test_class_names_and_pairing():
    assert class_names(10) == [f"class_{i}" for i in range(10)]  # ten classes are not Fashion-MNIST by count
    assert class_names(3) == ["class_0", "class_1", "class_2"]
    assert class_names(2, "cat, dog") == ["cat", "dog"]
    assert class_names(2, None, ["cat", "dog"]) == ["cat", "dog"]
    assert class_names(2, "ant,bee", ["cat", "dog"]) == ["ant", "bee"]  # given names win over recorded ones
    with pytest.raises(ValueError, match="3 class names recorded in the generator checkpoint"):
        class_names(2, None, ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 class names"):
        class_names(3, "cat,dog")
    tok, gen = FAMILIES["pixel"][0], FAMILIES["grid"][1]
    with pytest.raises(ValueError, match="does not fit"):
        check_pair(tok, gen)


def test_uint8_decoder_is_the_float_decoder_plus_rounding(models, tmp_path):
    """One trace gives both decoders: the shipped uint8 one is exactly round(255 * the float one)."""
    tokenizer, _ = models["proxy"]
    uint8_path = export_decoder(tokenizer, tmp_path / "u8.onnx", float_path=tmp_path / "f32.onnx")
    float_path = tmp_path / "f32.onnx"
    tokens = np.random.default_rng(0).integers(0, 64, (5, 8))
    images, unit = (ort_session(p).run(None, {"tokens": tokens})[0] for p in (uint8_path, float_path))
    assert images.dtype == np.uint8 and unit.dtype == np.float32 and 0.0 <= unit.min() <= unit.max() <= 1.0
    np.testing.assert_array_equal(images, np.round(unit * np.float32(255)).astype(np.uint8))
