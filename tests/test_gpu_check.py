"""The prepared GPU check (python -m bench.gpu_check) runs end to end; on this CPU with a small preset."""

import math

import pytest

from bench import gpu_check


@pytest.mark.slow
def test_the_gpu_check_reports_parity_and_speed_for_every_runner(tmp_path):
    out = tmp_path / "gpu_check.md"
    argv = ["--preset", "titok-fmnist-32", "--batch", "4", "--steps", "2", "--repeats", "1", "--warmup", "0"]
    assert gpu_check.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    parity = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:5]] for r in lines if r.count("|") == 5}
    # on the CPU, onnxruntime runs the same fp32 graphs as PyTorch: the same tokens and argmax, images within a level
    tokens, psnr, argmax = parity["ONNX Runtime CPU"]
    assert tokens == "100.00%" and argmax == "100.00%" and (psnr == "inf" or float(psnr) > 45)
    assert float(parity["PyTorch bfloat16 autocast"][1]) > 20  # half precision still decodes the same picture
    speeds = [r for r in lines if r.count("|") == 4 and "images/s" not in r and "---" not in r]
    runners = {r.split("|")[1].strip() for r in speeds}
    assert runners == {"PyTorch fp32", "PyTorch bfloat16 autocast", "ONNX Runtime CPU"}
    assert len(speeds) == 3 * 4 and all(math.isfinite(float(r.split("|")[3].replace(",", ""))) for r in speeds)
