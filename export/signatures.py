"""The tensors of a family's three graphs: names, dtypes, shapes; shared by the exporter, configs and manifest.

Shapes are batch-first with -1 for the dynamic batch (Triton's convention); ``dims`` drops it, as a
``config.pbtxt`` with ``max_batch_size > 0`` expects.
"""

from dataclasses import dataclass

GRAPHS = ("encoder", "decoder", "generator")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a graph; ``shape[0] == -1`` is the batch."""

    name: str
    dtype: str  # numpy dtype name: "uint8", "int64", "float32"
    shape: tuple[int, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape without the batch dimension."""
        return self.shape[1:]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of one graph, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict) -> "Signature":
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


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
