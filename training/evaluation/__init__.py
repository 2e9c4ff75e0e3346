"""Evaluation: reconstruction (PSNR/SSIM/MAE/MSE, codebook usage, rFID), generation (gFID, IS, class accuracy),
a linear probe on the quantized tokens; ``python -m training evaluate`` runs them (``cli.py``).

FID and IS use the features and softmax of the Fashion-MNIST classifier trained in this repository
(``training.models.FMNISTClassifier``), not Inception, so the numbers compare models evaluated here, not papers.

  features.py        classifier features, FID between feature sets
  inception.py       pytorch-fid's InceptionV3 from a local weights file (optional)
  reconstruction.py  encode + decode, the reconstruction metrics, the fields comparisons group by
  generation.py      the served sampler per class, gFID / IS / class accuracy
  probe.py           the linear probe on token vectors
  cli.py             the command line: Markdown tables, JSON, grids
"""

from .features import FID_NOTE, classify, fid_from_features
from .generation import default_settings, evaluate_generation, jsonable
from .probe import linear_probe
from .reconstruction import decode, describe, evaluate_reconstruction, reconstruct, reconstruction_metrics, structure

__all__ = [
    "FID_NOTE",
    "classify",
    "decode",
    "default_settings",
    "describe",
    "evaluate_generation",
    "evaluate_reconstruction",
    "fid_from_features",
    "jsonable",
    "linear_probe",
    "reconstruct",
    "reconstruction_metrics",
    "structure",
]
