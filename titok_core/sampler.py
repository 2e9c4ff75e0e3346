"""The MaskGIT sampler of TiTok's class-conditional generators, in numpy (shared by the gateway and evaluation).

Vocabulary: ids 0..K-1 are image tokens and K (= codebook_size) is the mask id. Classes 0..C-1 are real and
C (= num_classes) is the null class of classifier-free guidance. The generator is called as
``logits_fn(tokens int64 (B, N), class_ids int64 (B,)) -> logits (B, N, K)``.

A generation advances one step at a time, so a server can batch items that are at different steps with different
settings: ``step_inputs`` -> one call of a family's step graph -> ``apply`` (the gateway), or ``build_batch`` -> one
generator call -> ``advance`` (this reference on any generator's logits: evaluation, a backend without the step
graph); ``generate`` is the lock-step loop.

A variation (``Generation.resume``) starts from an image's tokens with some positions hidden, joins the schedule at
the step whose hidden count is the nearest at or above its own (``start_step``) and runs the remaining steps; with
every position hidden it is exactly a fresh generation. Its class may be the null class (unconditional).

Determinism (sampler version 2): the randomness is counter-based. Every hidden position of every step takes two
uniforms, one for its token (inverse CDF of softmax(guided / temperature), argmax at temperature 0) and one for its
confidence noise (Gumbel, times the temperature), each a hash of (seed, step, position, stream) and nothing else. The
hash is integer arithmetic that stays exact in int64 (32-bit state, products below 2**63, shifts as floor
division), and the sampling runs in float32 with the same operations in numpy (``sample``, the reference), in
PyTorch and in the ONNX step graph (``training/sampling.py``). So the same seed, class, settings and logits give the
same tokens alone or in any batch, on any backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("constant", "linear", "power-cosine")
SAMPLER_VERSION = 2  # recorded in a manifest: the tokens a seed gives (1: per-item PCG64 streams, retired)
_COSINE_POWER = 3.0  # exponent p of the power-cosine guidance schedule
_MASK_STREAM = 0x6D61736B  # mixed into a variation's seed for its mask draw, apart from its sampling stream

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Rows = list[tuple[int, int | None]]  # per item: (conditional row, unconditional row or None)

# the inputs of one sampling step, one row per item, in the step graph's order (export/signatures.py)
STEP_INPUTS = ("tokens", "class_ids", "seeds", "steps", "guidance", "temperature", "annealing", "mask_len")


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings of one generation; the defaults are TiTok-L-32's reference settings."""

    num_steps: int = 8
    guidance_scale: float = 4.5
    guidance_schedule: str = "linear"
    temperature: float = 9.5
    softmax_annealing: bool = False

    def __post_init__(self):
        steps = self.num_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, not {steps!r}")
        if self.guidance_schedule not in SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {', '.join(SCHEDULES)}, not {self.guidance_schedule!r}")
        _non_negative("guidance_scale", self.guidance_scale)
        _non_negative("temperature", self.temperature)
        if not isinstance(self.softmax_annealing, bool):
            raise ValueError(f"softmax_annealing must be a bool, not {self.softmax_annealing!r}")


def guidance_scale_at(settings: SamplingSettings, step: int) -> float:
    """The guidance scale of ``step``: g (constant), step/T * g (linear), or the power-cosine cfg."""
    g, total = float(settings.guidance_scale), settings.num_steps
    if settings.guidance_schedule == "constant":
        return g
    if settings.guidance_schedule == "linear":
        return step / total * g
    return (g - 1) * (1 - math.cos(math.pi * (step / total) ** _COSINE_POWER)) / 2 + 1


def _is_neutral(schedule: str, scale: float) -> bool:
    # scale 0 (constant/linear) and cfg 1 (power-cosine) both leave the conditional logits unchanged
    return scale == (1.0 if schedule == "power-cosine" else 0.0)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, not {seed!r}")


def hidden_before(step: int, seq_len: int, num_steps: int) -> int:
    """How many positions the arccos schedule leaves hidden before ``step`` (all of them before step 0)."""
    if step == 0:
        return seq_len
    return math.floor(seq_len * (math.acos(step / num_steps) / (math.pi * 0.5)))


def start_step(hidden: int, seq_len: int, num_steps: int) -> int:
    """The step a sequence with ``hidden`` masked positions (1..seq_len) starts at: the last one whose scheduled
    hidden count is still >= ``hidden``, so that the remaining steps reveal them at the schedule's pace."""
    if not 1 <= hidden <= seq_len:
        raise ValueError(f"hidden must lie in [1, {seq_len}], not {hidden!r}")
    return max(s for s in range(num_steps) if hidden_before(s, seq_len, num_steps) >= hidden)


def strength_mask(strength: float, seed: int, seq_len: int) -> np.ndarray:
    """The sorted positions a variation of ``strength`` (the fraction of tokens re-generated, rounded half up)
    hides: a uniform draw keyed by ``seed`` on a stream of its own, so that it leaves the sampling draws alone."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1], not {strength!r}")
    _check_seed(seed)
    count = math.floor(strength * seq_len + 0.5)
    rng = np.random.Generator(np.random.PCG64([int(seed), _MASK_STREAM]))
    return np.sort(rng.permutation(seq_len)[:count]).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Counter-based uniforms: exact in int64, so numpy, PyTorch and ONNX give the same integers
# ---------------------------------------------------------------------------------------------------

_WORD = 2**32  # the hash's state is one 32-bit word, held in int64
_HALF = 2**16
_MUL = (0x2C1B3C6D, 0x297A2D39)  # odd and below 2**31: a state times one stays below 2**63
_ADD = 0x3C6EF372
_KEY = 0x6A09E667  # keys seed 0 away from state 0
_UNIFORM_BITS = 23  # (2m + 1) / 2**24 with m < 2**23 is exact in float32 and lies strictly inside (0, 1)


def _square(x):
    """x * x mod 2**32 from 16-bit halves, so that no product reaches 2**63."""
    hi, lo = x // _HALF, x % _HALF
    return (lo * lo + ((2 * lo * hi) % _HALF) * _HALF) % _WORD


def _rotate(x):
    return x // _HALF + (x % _HALF) * _HALF  # the halves swapped


def mix(x):
    """A 32-bit integer hash of ``x`` (int64 in [0, 2**33)), with +, *, // and % only: the squares make it
    nonlinear (multiply-and-add alone keeps additive differences, and neighbouring counters correlate)."""
    x = (x * _MUL[0] + _ADD) % _WORD
    x = (x + _square(_rotate(x))) % _WORD
    x = (x * _MUL[1]) % _WORD
    x = (x + _square(_rotate(x))) % _WORD
    x = (x * _MUL[0]) % _WORD
    return (x + x // _HALF) % _WORD


def row_keys(seeds, steps):
    """The key of each item's step: seeds and steps (int64, any matching shape, seeds < 2**63) -> [0, 2**32)."""
    key = mix(seeds % _WORD + _KEY)
    key = mix(key + seeds // _WORD)
    return mix(key + steps)


def uniforms(keys: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (B, N) uniforms for the tokens (stream 0) and the confidences (stream 1) from keys (B, 1)."""
    counters = np.arange(2 * seq_len, dtype=np.int64).reshape(1, seq_len, 2)  # (position, stream)
    bits = mix(mix(keys.reshape(-1, 1, 1) + counters)) // 2 ** (32 - _UNIFORM_BITS)
    u = (2 * bits + 1).astype(np.float32) / np.float32(2 ** (_UNIFORM_BITS + 1))
    return u[..., 0], u[..., 1]


# ---------------------------------------------------------------------------------------------------
# One step from logits, for a whole batch (the reference of the step graph)
# ---------------------------------------------------------------------------------------------------


def sample(
    cond: np.ndarray,
    uncond: np.ndarray,
    tokens: np.ndarray,
    seeds: np.ndarray,
    steps: np.ndarray,
    guidance: np.ndarray,
    temperature: np.ndarray,
    annealing: np.ndarray,
    mask_len: np.ndarray,
) -> np.ndarray:
    """The tokens (B, N) after one MaskGIT step, from the conditional and null-class logits (B, N, K) float32 and the
    per-row inputs of ``step_inputs`` ((B, 1) each). Every op is float32 in the order the PyTorch step uses.

    guided = cond + guidance * (cond - uncond), divided by ``annealing``; a hidden position draws its token by
    inverse CDF of softmax(guided / temperature) (argmax when the temperature is 0) and its confidence is the
    token's guided logit plus temperature x Gumbel noise; fixed positions keep their token with confidence +inf.
    Then the ``mask_len`` lowest confidences (ties included) are hidden again; mask_len 0 keeps every token.
    """
    f32 = np.float32
    mask_id = cond.shape[-1]
    g, t, a = (np.asarray(v, dtype=f32).reshape(-1, 1, 1) for v in (guidance, temperature, annealing))
    cond, uncond = np.asarray(cond, dtype=f32), np.asarray(uncond, dtype=f32)
    logits = (cond + g * (cond - uncond)) / a
    u_token, u_conf = uniforms(row_keys(np.asarray(seeds), np.asarray(steps)), tokens.shape[1])
    # inverse CDF without dividing by the sum: the first position whose cumulative weight reaches u * total
    z = logits / np.where(t > 0, t, f32(1))
    weights = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(weights, axis=-1, dtype=f32)
    # counted in float32 (exact below 2**24): a float sum is several times faster than an int64 one in ONNX Runtime
    drawn = (cdf < u_token[..., None] * cdf[..., -1:]).sum(axis=-1, dtype=f32).astype(np.int64)
    drawn = np.minimum(drawn, mask_id - 1)
    chosen = np.where(t[..., 0] > 0, drawn, logits.argmax(axis=-1))
    picked = np.take_along_axis(logits, chosen[..., None], axis=-1)[..., 0]
    gumbel = -np.log(-np.log(u_conf))
    hidden = tokens == mask_id
    confidence = np.where(hidden, picked + t[..., 0] * gumbel, f32(np.inf))
    sampled = np.where(hidden, chosen, tokens)
    # like the reference, re-mask every position at or below the mask_len-th smallest confidence
    mask_len = np.asarray(mask_len, dtype=np.int64).reshape(-1, 1)
    cutoff = np.take_along_axis(np.sort(confidence, axis=-1), np.maximum(mask_len - 1, 0), axis=-1)
    remask = (confidence <= cutoff) & (mask_len > 0)
    return np.where(remask, mask_id, sampled).astype(np.int64)


@dataclass
class Generation:
    """One item being generated: its tokens, its seed and its place in its schedule."""

    tokens: np.ndarray  # (N,) int64; mask_id where still hidden
    seed: int
    class_id: int
    settings: SamplingSettings
    mask_id: int  # = codebook_size
    null_class_id: int  # = num_classes
    step: int = 0

    @classmethod
    def start(
        cls,
        class_id: int,
        seed: int,
        settings: SamplingSettings,
        *,
        seq_len: int,
        codebook_size: int,
        num_classes: int,
    ) -> Generation:
        """A fresh generation: every position masked."""
        if isinstance(class_id, bool) or not isinstance(class_id, numbers.Integral) or not 0 <= class_id < num_classes:
            raise ValueError(f"class_id must be an integer in [0, {num_classes}), not {class_id!r}")
        _check_seed(seed)
        if seed >= 2**63:
            raise ValueError(f"seed must be below 2**63, not {seed!r}")
        if seq_len < 1 or codebook_size < 1:
            raise ValueError(f"seq_len and codebook_size must be >= 1, not {seq_len} and {codebook_size}")
        return cls(
            tokens=np.full(seq_len, codebook_size, dtype=np.int64),
            seed=int(seed),
            class_id=int(class_id),
            settings=settings,
            mask_id=codebook_size,
            null_class_id=num_classes,
        )

    @classmethod
    def resume(
        cls,
        tokens: np.ndarray,
        hidden: Sequence[int] | np.ndarray,
        class_id: int,
        seed: int,
        settings: SamplingSettings,
        *,
        codebook_size: int,
        num_classes: int,
    ) -> Generation:
        """A variation of ``tokens`` (N,): the ``hidden`` positions re-generated for ``class_id`` (num_classes: the
        null class, unconditional) from the step ``start_step`` gives; done at once when nothing is hidden."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not len(tokens) or tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be one non-empty sequence of integer ids, not shape {tokens.shape}")
        if ((tokens < 0) | (tokens >= codebook_size)).any():
            raise ValueError(f"token ids must lie in [0, {codebook_size})")
        positions = np.asarray(hidden, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if ((positions < 0) | (positions >= n)).any() or len(np.unique(positions)) != len(positions):
            raise ValueError(f"hidden positions must be distinct and lie in [0, {n})")
        ok_class = not isinstance(class_id, bool) and isinstance(class_id, numbers.Integral)
        if not ok_class or not 0 <= class_id <= num_classes:
            raise ValueError(f"class_id must be an integer in [0, {num_classes}], not {class_id!r}")
        gen = cls.start(0, seed, settings, seq_len=n, codebook_size=codebook_size, num_classes=num_classes)
        gen.class_id = int(class_id)
        gen.tokens = tokens.astype(np.int64)
        gen.tokens[positions] = codebook_size
        gen.step = start_step(len(positions), n, settings.num_steps) if len(positions) else settings.num_steps
        return gen

    @property
    def done(self) -> bool:
        """Whether every step has been taken (no mask id is left then)."""
        return self.step >= self.settings.num_steps

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the next step."""
        return guidance_scale_at(self.settings, self.step)

    @property
    def needs_uncond(self) -> bool:
        """Whether the next step needs an unconditional (null-class) generator row (never for the null class: its
        conditional row is already unconditional, and guidance would leave it unchanged)."""
        if self.class_id == self.null_class_id:
            return False
        return not _is_neutral(self.settings.guidance_schedule, self.guidance_scale)


def _check_batch(gens: Sequence[Generation]) -> None:
    """Every item of a step is still running and shares seq_len and codebook_size with the first."""
    first = gens[0]
    for gen in gens:
        if gen.done:
            raise ValueError("a generation that is already done cannot be advanced")
        if gen.tokens.shape != first.tokens.shape or gen.mask_id != first.mask_id:
            raise ValueError("all generations of a batch must share seq_len and codebook_size")


def build_batch(gens: Sequence[Generation]) -> tuple[np.ndarray, np.ndarray, Rows]:
    """Generator inputs for one step of ``gens``: tokens (R, N), class_ids (R,) and each item's rows.

    The first len(gens) rows are the items' conditional rows, in order; the null-class rows of the items whose
    current guidance needs one follow.
    """
    if not gens:
        raise ValueError("build_batch needs at least one generation")
    _check_batch(gens)
    uncond = [i for i, gen in enumerate(gens) if gen.needs_uncond]
    order = list(range(len(gens))) + uncond
    tokens = np.stack([gens[i].tokens for i in order]).astype(np.int64, copy=False)
    classes = [gen.class_id for gen in gens] + [gens[i].null_class_id for i in uncond]
    uncond_row = {i: len(gens) + j for j, i in enumerate(uncond)}
    rows = [(i, uncond_row.get(i)) for i in range(len(gens))]
    return tokens, np.asarray(classes, dtype=np.int64), rows


def _row_inputs(gen: Generation) -> tuple[float, float, float, int]:
    """guidance, temperature, annealing and mask_len of ``gen``'s next step (see ``sample``)."""
    step, total = gen.step, gen.settings.num_steps
    guidance = 0.0
    if gen.needs_uncond:  # power-cosine's cfg mixes as uncond + s (cond - uncond) = cond + (s - 1) (cond - uncond)
        scale = gen.guidance_scale
        guidance = scale - 1 if gen.settings.guidance_schedule == "power-cosine" else scale
    ratio = (step + 1) / total
    temperature = gen.settings.temperature * (1 - ratio)
    annealing = 0.5 + 0.8 * (1 - ratio) if gen.settings.softmax_annealing else 1.0
    mask_len = 0  # the last step keeps every token
    if step < total - 1:
        n, hidden = gen.tokens.shape[0], int(np.count_nonzero(gen.tokens == gen.mask_id))
        mask_len = max(1, min(hidden - 1, math.floor(n * (math.acos(ratio) / (math.pi * 0.5)))))
    return guidance, temperature, annealing, mask_len


def step_inputs(gens: Sequence[Generation]) -> tuple[np.ndarray, ...]:
    """The per-row inputs of one step of ``gens``, in ``STEP_INPUTS`` order: tokens (B, N) int64, then (B, 1) each:
    class ids, seeds, steps (int64), guidance, temperature, annealing (float32), mask_len (int64)."""
    if not gens:
        raise ValueError("a step needs at least one generation")
    _check_batch(gens)
    rows = [_row_inputs(gen) for gen in gens]

    def column(values, dtype):
        return np.asarray(values, dtype=dtype).reshape(-1, 1)

    guidance, temperature, annealing, mask_len = zip(*rows, strict=True)
    return (
        np.stack([gen.tokens for gen in gens]).astype(np.int64, copy=False),
        column([gen.class_id for gen in gens], np.int64),
        column([gen.seed for gen in gens], np.int64),
        column([gen.step for gen in gens], np.int64),
        column(guidance, np.float32),
        column(temperature, np.float32),
        column(annealing, np.float32),
        column(mask_len, np.int64),
    )


def apply(gens: Sequence[Generation], tokens: np.ndarray) -> None:
    """Take a step's output tokens (B, N) into ``gens``, each one step further."""
    tokens = np.asarray(tokens)
    if tokens.shape != (len(gens), *gens[0].tokens.shape):
        raise ValueError(f"a step of {len(gens)} generations returns ({len(gens)}, N) tokens, not {tokens.shape}")
    for gen, row in zip(gens, tokens, strict=True):
        gen.tokens = row.astype(np.int64)
        gen.step += 1


def advance(gens: Sequence[Generation], logits: np.ndarray, rows: Rows) -> None:
    """One step of ``gens`` from the generator's ``logits`` (R, N, K) of ``build_batch``'s rows, in place (the
    numpy reference of the step graph, for a backend without it and for evaluation)."""
    logits = np.asarray(logits)
    if len(rows) != len(gens):
        raise ValueError(f"{len(gens)} generations but {len(rows)} row entries")
    inputs = step_inputs(gens)
    expected = (gens[0].tokens.shape[0], gens[0].mask_id)
    if logits.ndim != 3 or logits.shape[1:] != expected:
        raise ValueError(f"logits must have shape (R, {expected[0]}, {expected[1]}), not {logits.shape}")
    cond = logits[[c for c, _ in rows]]
    uncond = logits[[c if u is None else u for c, u in rows]]  # no null-class row: guidance is 0 for that item
    tokens, _, seeds, steps, guidance, temperature, annealing, mask_len = inputs
    apply(gens, sample(cond, uncond, tokens, seeds, steps, guidance, temperature, annealing, mask_len))


def generate(
    logits_fn: LogitsFn,
    class_ids: Sequence[int],
    seeds: Sequence[int],
    *,
    seq_len: int,
    codebook_size: int,
    num_classes: int,
    settings: SamplingSettings | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Generate tokens (B, N) int64 for ``class_ids`` with one seed per item, all items in lock-step.

    ``batch_size`` caps the items per chunk (a chunk's generator call has up to twice as many rows with guidance);
    chunking does not change the result.
    """
    settings = SamplingSettings() if settings is None else settings
    if len(class_ids) != len(seeds):
        raise ValueError(f"{len(class_ids)} class ids but {len(seeds)} seeds")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, not {batch_size!r}")
    dims = dict(seq_len=seq_len, codebook_size=codebook_size, num_classes=num_classes)
    gens = [Generation.start(c, s, settings, **dims) for c, s in zip(class_ids, seeds, strict=True)]
    chunk = batch_size or max(len(gens), 1)
    for begin in range(0, len(gens), chunk):
        part = gens[begin : begin + chunk]
        while not part[0].done:
            tokens, classes, rows = build_batch(part)
            advance(part, logits_fn(tokens, classes), rows)
    if not gens:
        return np.zeros((0, seq_len), dtype=np.int64)
    return np.stack([gen.tokens for gen in gens])


def vary(
    logits_fn: LogitsFn,
    sources: np.ndarray,
    hidden: Sequence[Sequence[int] | np.ndarray],
    class_ids: Sequence[int],
    seeds: Sequence[int],
    *,
    codebook_size: int,
    num_classes: int,
    settings: SamplingSettings | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Variations (B, N) int64 of ``sources`` (B, N): item i re-generates its ``hidden[i]`` positions for
    ``class_ids[i]`` (num_classes: unconditional) with ``seeds[i]``; items that start at other steps share the
    generator calls of the steps they have in common, and chunking (``batch_size``) does not change the result."""
    settings = SamplingSettings() if settings is None else settings
    if not len(sources) == len(hidden) == len(class_ids) == len(seeds):
        raise ValueError("sources, hidden, class_ids and seeds must have one entry per item")
    dims = dict(codebook_size=codebook_size, num_classes=num_classes)
    gens = [
        Generation.resume(t, h, c, s, settings, **dims)
        for t, h, c, s in zip(np.asarray(sources), hidden, class_ids, seeds, strict=True)
    ]
    chunk = batch_size or max(len(gens), 1)
    for begin in range(0, len(gens), chunk):
        while pending := [g for g in gens[begin : begin + chunk] if not g.done]:
            tokens, classes, rows = build_batch(pending)
            advance(pending, logits_fn(tokens, classes), rows)
    if not gens:
        return np.zeros((0, np.asarray(sources).reshape(0, -1).shape[1]), dtype=np.int64)
    return np.stack([gen.tokens for gen in gens])
