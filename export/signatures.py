"""The tensors of the graphs this exporter writes (the types are the manifest contract's, in the core)."""

from titok_core.manifest import Signature, TensorSpec


def family_signatures(image_size: int, num_tokens: int, codebook_size: int) -> dict[str, Signature]:
    """The shipped graphs: uint8 NHWC images in and out, int64 ids, float32 logits."""
    images = TensorSpec("images", "uint8", (-1, image_size, image_size, 3))
    tokens = TensorSpec("tokens", "int64", (-1, num_tokens))
    return {
        "encoder": Signature((images,), (tokens,)),
        "decoder": Signature((tokens,), (images,)),
        "generator": Signature(
            (tokens, TensorSpec("class_ids", "int64", (-1, 1))),
            (TensorSpec("logits", "float32", (-1, num_tokens, codebook_size)),),
        ),
    }


def float_decoder_signature(image_size: int, num_tokens: int) -> Signature:
    """The verification variant of the decoder: float32 NHWC in [0, 1] instead of uint8."""
    return Signature(
        (TensorSpec("tokens", "int64", (-1, num_tokens)),),
        (TensorSpec("images", "float32", (-1, image_size, image_size, 3)),),
    )
