"""The MaskGIT step in PyTorch: generator, guidance mix, sampling and re-masking in one module (sampler version 2).

``MaskGITStep`` is what ``export`` traces into the fused "step" ONNX graph, and it runs eagerly as well. Its sampling
is ``titok_core.sampler.sample`` op for op in float32, and the counter-based hash is the core's own functions
(``mix``, ``row_keys``: +, *, // and % on int64 only, which mean the same on numpy arrays, torch tensors and in the
traced graph). So the numpy reference, this module and the ONNX graph give the same tokens for the same seeds; the
one known source of a difference is the last bit of exp / log / cumsum (torch's CPU cumsum adds float32 in double),
which can move a token only when a uniform falls within about 1e-6 of a CDF step.
"""

import torch
from torch import nn

from titok_core.sampler import mix, row_keys

_UNIFORM_SHIFT = 2**9  # keeps the top 23 of 32 bits, as the core's uniforms
_UNIFORM_SCALE = 2.0**24


def uniforms(keys: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (B, N) uniforms for the tokens and the confidences from keys (B, 1): ``titok_core.sampler.uniforms``."""
    counters = torch.arange(2 * seq_len, dtype=torch.int64, device=keys.device).reshape(1, seq_len, 2)
    bits = mix(mix(keys.reshape(-1, 1, 1) + counters)) // _UNIFORM_SHIFT
    u = (2 * bits + 1).to(torch.float32) / _UNIFORM_SCALE
    return u[..., 0], u[..., 1]


def sample(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    tokens: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    guidance: torch.Tensor,
    temperature: torch.Tensor,
    annealing: torch.Tensor,
    mask_len: torch.Tensor,
) -> torch.Tensor:
    """``titok_core.sampler.sample`` in PyTorch (the same float32 ops in the same order): tokens (B, N) int64."""
    mask_id = cond.shape[-1]
    g, t, a = (v.to(torch.float32).reshape(-1, 1, 1) for v in (guidance, temperature, annealing))
    cond, uncond = cond.to(torch.float32), uncond.to(torch.float32)
    logits = (cond + g * (cond - uncond)) / a
    u_token, u_conf = uniforms(row_keys(seeds, steps), tokens.shape[1])
    z = logits / torch.where(t > 0, t, torch.ones_like(t))
    weights = torch.exp(z - z.amax(dim=-1, keepdim=True))
    cdf = torch.cumsum(weights, dim=-1)
    drawn = (cdf < u_token.unsqueeze(-1) * cdf[..., -1:]).to(torch.float32).sum(dim=-1).to(torch.int64)
    drawn = torch.clamp(drawn, max=mask_id - 1)
    t_row = t[..., 0]
    chosen = torch.where(t_row > 0, drawn, logits.argmax(dim=-1))
    picked = logits.gather(-1, chosen.unsqueeze(-1))[..., 0]
    gumbel = -torch.log(-torch.log(u_conf))
    hidden = tokens == mask_id
    confidence = torch.where(hidden, picked + t_row * gumbel, torch.full_like(picked, float("inf")))
    sampled = torch.where(hidden, chosen, tokens)
    mask_len = mask_len.reshape(-1, 1)
    cutoff = torch.sort(confidence, dim=-1).values.gather(-1, torch.clamp(mask_len - 1, min=0))
    remask = (confidence <= cutoff) & (mask_len > 0)
    return torch.where(remask, torch.full_like(sampled, mask_id), sampled)


class MaskGITStep(nn.Module):
    """One step: per-row inputs (``titok_core.sampler.STEP_INPUTS``) -> the next tokens (B, N) int64.

    The null-class rows are built here, only for the rows whose guidance is not 0 (a neutral schedule step or an
    unconditional item needs none), so one call runs the generator once on B + U rows."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator
        self.null_class = generator.config.num_classes
        self.eval()

    def forward(self, tokens, class_ids, seeds, steps, guidance, temperature, annealing, mask_len):
        batch = tokens.shape[0]
        needs = guidance.reshape(-1) != 0
        guided_rows = torch.nonzero(needs).reshape(-1)  # (U,)
        rows = torch.cat([tokens, tokens.index_select(0, guided_rows)])
        classes = torch.cat([class_ids.reshape(-1), torch.full_like(guided_rows, self.null_class)])
        logits = self.generator(rows, classes)  # (B + U, N, K)
        # row i's null-class logits: its own row (guidance 0 then) or B + its rank among the guided rows
        rank = torch.cumsum(needs.to(torch.int64), dim=0) - 1
        own = torch.arange(batch, dtype=torch.int64, device=tokens.device)
        uncond_index = torch.where(needs, batch + rank, own)
        cond = logits[:batch]
        uncond = logits.index_select(0, uncond_index)
        return sample(cond, uncond, tokens, seeds, steps, guidance, temperature, annealing, mask_len)
