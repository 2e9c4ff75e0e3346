"""Inception features for FID comparable to papers: pytorch-fid's InceptionV3 with a local weights file."""

from pathlib import Path

import torch

from ..models.blocks import to_unit_float
from .features import FeatureFn

INCEPTION_HINT = "--inception needs the `pytorch-fid` package (pip install pytorch-fid), which brings torchvision"


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> FeatureFn:
    """pytorch-fid's InceptionV3 pool3 (2048-d) with a local weights file; needs the `pytorch-fid` package."""
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError as e:
        raise RuntimeError(INCEPTION_HINT) from e
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path} (want pytorch-fid's pt_inception-2015-12-05-*.pth)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # pytorch-fid fetches its weights by URL; patched for the build only, so the local file is used, never the network
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        model = fid_inception.InceptionV3([3]).to(device).eval()
    finally:
        fid_inception.load_state_dict_from_url = original

    def features(images: torch.Tensor) -> torch.Tensor:
        return model(to_unit_float(images.to(device)))[0]  # (B, 2048, 1, 1); it resizes to 299x299 itself

    return features
