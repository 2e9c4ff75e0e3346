"""The tensors of the graphs this exporter writes (the types are the manifest contract's, in the core)."""

from titok_core.manifest import Signature, TensorSpec
from titok_core.sampler import STEP_INPUTS

# the step graph's per-row inputs besides the tokens: (B, 1) each, so that Triton can batch them
_STEP_DTYPES = {"guidance": "float32", "temperature": "float32", "annealing": "float32"}


def family_signatures(image_size: int, num_tokens: int, codebook_size: int) -> dict[str, Signature]:
    """The shipped graphs: uint8 NHWC images in and out, int64 ids, float32 logits, and the generator step."""
    images = TensorSpec("images", "uint8", (-1, image_size, image_size, 3))
    tokens = TensorSpec("tokens", "int64", (-1, num_tokens))
    return {
        "encoder": Signature((images,), (tokens,)),
        "decoder": Signature((tokens,), (images,)),
        "generator": Signature(
            (tokens, TensorSpec("class_ids", "int64", (-1, 1))),
            (TensorSpec("logits", "float32", (-1, num_tokens, codebook_size)),),
        ),
        # one MaskGIT step (sampler version 2): generator, guidance, sampling and re-masking in one call
        "step": Signature(
            (tokens, *(TensorSpec(n, _STEP_DTYPES.get(n, "int64"), (-1, 1)) for n in STEP_INPUTS[1:])),
            (TensorSpec("next_tokens", "int64", (-1, num_tokens)),),
        ),
    }


def float_decoder_signature(image_size: int, num_tokens: int) -> Signature:
    """The verification variant of the decoder: float32 NHWC in [0, 1] instead of uint8."""
    return Signature(
        (TensorSpec("tokens", "int64", (-1, num_tokens)),),
        (TensorSpec("images", "float32", (-1, image_size, image_size, 3)),),
    )
