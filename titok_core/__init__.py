"""The ground floor of titok-serve: what training, export and serving all use, with numpy and PIL only.

- ``titok_core.sampler``: the MaskGIT sampler (one for serving and evaluation).
- ``titok_core.images``: the reference preprocessing (any image -> the model's RGB square).
- ``titok_core.manifest``: the contract between the exporter and the gateway (graph names and tensors, the
  manifest file and its format version).

It imports nothing else of the project; everything else imports down into it.
"""
