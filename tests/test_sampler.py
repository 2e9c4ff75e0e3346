"""Tests for service/sampler.py with tiny fake generators (numpy only)."""

import math

import numpy as np
import pytest

from titok_core.sampler import (
    Generation,
    SamplingSettings,
    advance,
    build_batch,
    generate,
    guidance_scale_at,
    hidden_before,
    start_step,
    strength_mask,
    vary,
)

N, K, C = 8, 16, 5  # tokens per image, codebook size (= mask id), real classes (C = null class)
DIMS = dict(seq_len=N, codebook_size=K, num_classes=C)
TABLE = (np.random.default_rng(0).normal(size=(C + 1, N, K)) * 3).astype(np.float32)  # per-class logits
MIX = np.random.default_rng(1).normal(size=(K + 1, K)).astype(np.float32)  # token context, mask id included


def make_logits_fn(table=TABLE, context=True, calls=None):
    """A fake generator: logits of a class plus a term that depends on the row's tokens; row by row."""

    def logits_fn(tokens, class_ids):
        assert tokens.dtype == np.int64 and class_ids.dtype == np.int64
        assert not (tokens > K).any() and not (class_ids > C).any()
        if calls is not None:
            calls.append(class_ids.tolist())
        # one row at a time, so the fake is exactly batch invariant, like the sampler must be
        rows = [table[c] + (MIX[t].mean(axis=0) if context else 0) for t, c in zip(tokens, class_ids, strict=True)]
        return np.stack(rows).astype(np.float32)

    return logits_fn


def start(class_id=0, seed=0, **settings):
    return Generation.start(class_id, seed, SamplingSettings(**settings), **DIMS)


def step(gens, logits_fn):
    tokens, classes, rows = build_batch(gens)
    advance(gens, logits_fn(tokens, classes), rows)


def test_same_seeds_same_tokens_and_different_seeds_differ():
    fn = make_logits_fn()
    first = generate(fn, [0, 1, 2, 3], [10, 11, 12, 13], **DIMS)
    again = generate(fn, [0, 1, 2, 3], [10, 11, 12, 13], **DIMS)
    other = generate(fn, [0, 1, 2, 3], [20, 21, 22, 23], **DIMS)
    assert first.dtype == np.int64 and first.shape == (4, N)
    assert ((first >= 0) & (first < K)).all()
    np.testing.assert_array_equal(first, again)
    assert all((first[i] != other[i]).any() for i in range(4))


def test_item_alone_equals_item_in_a_mixed_batch_with_late_joins():
    fn = make_logits_fn()
    settings = dict(num_steps=6, guidance_scale=2.0, guidance_schedule="linear", temperature=4.0)
    alone = generate(fn, [3], [42], settings=SamplingSettings(**settings), **DIMS)[0]

    target = start(3, 42, **settings)
    late = start(2, 42, num_steps=5, temperature=0.0)  # same seed, other class and settings
    active = [
        start(0, 1),
        start(1, 2, num_steps=3, guidance_schedule="constant", guidance_scale=1.5),
        start(4, 3, num_steps=10, guidance_schedule="power-cosine", softmax_annealing=True),
    ]
    for tick in range(20):
        if tick == 2:
            active.insert(1, target)  # joins mid-way, not at the end of the batch
        if tick == 4:
            active.append(late)
        active = [gen for gen in active if not gen.done]
        if not active:
            break
        step(active, fn)
    assert target.done and late.done
    np.testing.assert_array_equal(target.tokens, alone)


def test_chunking_does_not_change_the_result():
    fn = make_logits_fn()
    classes, seeds = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    whole = generate(fn, classes, seeds, **DIMS)
    np.testing.assert_array_equal(generate(fn, classes, seeds, batch_size=2, **DIMS), whole)


@pytest.mark.parametrize("num_steps", [1, 8, 64])
def test_masked_count_follows_the_arccos_schedule(num_steps):
    fn = make_logits_fn()
    gen = start(1, 5, num_steps=num_steps, temperature=3.0)
    masked, clamps = N, set()
    for s in range(num_steps):
        before = gen.tokens.copy()
        step([gen], fn)
        fixed = before != K
        np.testing.assert_array_equal(gen.tokens[fixed], before[fixed])  # fixed tokens never change
        if s == num_steps - 1:
            expected = 0
        else:
            raw = math.floor(N * math.acos((s + 1) / num_steps) / (math.pi / 2))
            expected = max(1, min(masked - 1, raw))
            clamps |= {"low"} if raw < 1 else {"high"} if raw > masked - 1 else set()
        masked = int((gen.tokens == K).sum())
        assert masked == expected, f"step {s}"
    assert gen.done and gen.tokens.dtype == np.int64 and (gen.tokens < K).all()
    if num_steps == 64:  # long enough to hit both clamps
        assert clamps == {"low", "high"}


def test_linear_guidance_has_no_uncond_rows_at_step_0():
    calls = []
    fn = make_logits_fn(calls=calls)
    generate(fn, [2], [0], settings=SamplingSettings(num_steps=4, guidance_schedule="linear"), **DIMS)
    assert calls == [[2], [2, C], [2, C], [2, C]]

    linear, constant = start(2, 0, guidance_schedule="linear"), start(3, 0, guidance_schedule="constant")
    tokens, classes, rows = build_batch([linear, constant])
    assert classes.tolist() == [2, 3, C] and rows == [(0, None), (1, 2)]
    np.testing.assert_array_equal(tokens[1], tokens[2])
    step([linear, constant], fn)
    tokens, classes, rows = build_batch([linear, constant])
    assert classes.tolist() == [2, 3, C, C] and rows == [(0, 2), (1, 3)]
    assert linear.guidance_scale == pytest.approx(4.5 / 8)


def test_constant_scale_0_is_pure_conditional_sampling():
    calls = []
    kwargs = dict(num_steps=6, temperature=1.0, guidance_schedule="constant")
    classes, seeds = [2, 2, 2], [0, 1, 2]
    zero = generate(
        make_logits_fn(calls=calls), classes, seeds, settings=SamplingSettings(guidance_scale=0.0, **kwargs), **DIMS
    )
    assert all(C not in call for call in calls)
    # a model whose null class equals class 2: guidance of any scale then leaves the conditional logits
    same = TABLE.copy()
    same[C] = TABLE[2]
    guided = SamplingSettings(guidance_scale=3.0, **kwargs)
    np.testing.assert_array_equal(generate(make_logits_fn(same), classes, seeds, settings=guided, **DIMS), zero)
    # while with the real null class, guidance changes the tokens
    assert (generate(make_logits_fn(), classes, seeds, settings=guided, **DIMS) != zero).any()


def test_power_cosine_step_0_is_conditional():
    settings = dict(num_steps=4, guidance_scale=3.0, guidance_schedule="power-cosine")
    assert guidance_scale_at(SamplingSettings(**settings), 0) == 1.0
    fn = make_logits_fn()
    cosine, plain = start(1, 7, **settings), start(1, 7, num_steps=4, guidance_scale=0.0, guidance_schedule="constant")
    assert build_batch([cosine])[2] == [(0, None)]
    step([cosine], fn)
    step([plain], fn)
    np.testing.assert_array_equal(cosine.tokens, plain.tokens)
    assert build_batch([cosine])[2] == [(0, 1)]
    assert cosine.guidance_scale == pytest.approx(2.0 * (1 - math.cos(math.pi / 64)) / 2 + 1)


@pytest.mark.parametrize("schedule", ["constant", "linear", "power-cosine"])
def test_guided_logits_follow_each_schedule(schedule):
    g, total = 4.5, 4
    gen = start(0, 0, num_steps=total, guidance_scale=g, guidance_schedule=schedule, temperature=0.0)
    gen.step = total - 1  # the last step fixes every masked position at the argmax of the guided logits
    rng = np.random.default_rng(3)
    cond, uncond = rng.normal(size=(N, K)), rng.normal(size=(N, K))
    _, _, rows = build_batch([gen])
    logits = np.stack([cond, uncond]).astype(np.float32)
    advance([gen], logits, rows)
    cond, uncond = logits.astype(np.float64)
    if schedule == "constant":
        expected = cond + g * (cond - uncond)
    elif schedule == "linear":
        expected = cond + (total - 1) / total * g * (cond - uncond)
    else:
        cfg = (g - 1) * (1 - math.cos(math.pi * ((total - 1) / total) ** 3)) / 2 + 1
        expected = uncond + cfg * (cond - uncond)
    np.testing.assert_array_equal(gen.tokens, expected.argmax(axis=-1))
    assert (gen.tokens != cond.argmax(axis=-1)).any()  # guidance mattered here


@pytest.mark.parametrize("annealing", [False, True])
def test_temperature_0_is_argmax_decoding(annealing):
    fn = make_logits_fn(context=False)  # logits that do not depend on the tokens: the argmax is known
    settings = SamplingSettings(
        temperature=0.0, guidance_scale=0.0, guidance_schedule="constant", softmax_annealing=annealing
    )
    tokens = generate(fn, [0, 3, 4], [1, 2, 3], settings=settings, **DIMS)
    np.testing.assert_array_equal(tokens, TABLE[[0, 3, 4]].argmax(axis=-1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(guidance_schedule="cosine"), "guidance_schedule"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(guidance_scale=-0.5), "guidance_scale"),
        (dict(softmax_annealing="yes"), "softmax_annealing"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def test_call_errors():
    with pytest.raises(ValueError, match="class_id"):
        start(class_id=C)
    with pytest.raises(ValueError, match="seed"):
        start(seed=-1)
    with pytest.raises(ValueError, match="seeds"):
        generate(make_logits_fn(), [0, 1], [0], **DIMS)
    gen = start(num_steps=1)
    _, _, rows = build_batch([gen])
    with pytest.raises(ValueError, match="shape"):
        advance([gen], np.zeros((1, N, K + 1), np.float32), rows)
    step([gen], make_logits_fn())
    with pytest.raises(ValueError, match="done"):
        build_batch([gen])


# -- variations: resuming from kept tokens -------------------------------------------------------------------

SOURCE = np.random.default_rng(2).integers(0, K, N)


def resume(hidden, class_id=1, seed=0, **settings):
    settings_ = SamplingSettings(**settings)
    return Generation.resume(SOURCE, hidden, class_id, seed, settings_, codebook_size=K, num_classes=C)


def run(gen, fn=None):
    fn = fn or make_logits_fn()
    while not gen.done:
        step([gen], fn)
    return gen.tokens


def test_every_position_hidden_is_exactly_a_fresh_generation():
    settings = dict(num_steps=6, guidance_scale=2.0, temperature=4.0)
    fresh = generate(make_logits_fn(), [3], [9], settings=SamplingSettings(**settings), **DIMS)[0]
    np.testing.assert_array_equal(run(resume(np.arange(N), 3, 9, **settings)), fresh)
    assert resume(np.arange(N), 3, 9, **settings).step == 0


@pytest.mark.parametrize("num_steps", [1, 4, 8])
def test_a_variation_runs_the_rest_of_the_schedule_and_keeps_what_is_not_hidden(num_steps):
    for count in range(1, N + 1):
        first = start_step(count, N, num_steps)
        # the last step whose scheduled hidden count covers the variation's
        assert hidden_before(first, N, num_steps) >= count
        assert first == num_steps - 1 or hidden_before(first + 1, N, num_steps) < count
        hidden = strength_mask(count / N, count, N)
        gen = resume(hidden, num_steps=num_steps, temperature=3.0)
        assert gen.step == first and (gen.tokens == K).sum() == count
        calls = []
        fn = make_logits_fn(calls=calls)
        tokens = run(gen, fn)
        assert len(calls) == num_steps - first  # one generator call per remaining step
        kept = np.setdiff1d(np.arange(N), hidden)
        np.testing.assert_array_equal(tokens[kept], SOURCE[kept])
        assert (tokens < K).all()


def test_nothing_hidden_is_done_at_once_with_the_source_tokens():
    gen = resume([])
    assert gen.done
    np.testing.assert_array_equal(gen.tokens, SOURCE)


def test_strength_masks_are_keyed_by_the_seed_and_rounded_half_up():
    assert len(strength_mask(0.0, 0, 32)) == 0 and len(strength_mask(1.0, 0, 32)) == 32
    assert len(strength_mask(0.5, 0, 32)) == 16 and len(strength_mask(3 / 64, 0, 32)) == 2  # 1.5 -> 2
    np.testing.assert_array_equal(strength_mask(0.25, 7, 32), strength_mask(0.25, 7, 32))
    assert not np.array_equal(strength_mask(0.25, 7, 32), strength_mask(0.25, 8, 32))
    mask = strength_mask(0.25, 7, 32)
    assert (np.diff(mask) > 0).all() and mask.dtype == np.int64
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="strength"):
            strength_mask(bad, 0, 32)


def test_a_variation_alone_equals_it_among_fresh_generations_and_other_variations():
    fn = make_logits_fn()
    settings = dict(num_steps=6, guidance_scale=2.0, temperature=4.0)
    hidden = strength_mask(0.5, 4, N)
    alone = run(resume(hidden, 2, 4, **settings), fn)
    target = resume(hidden, 2, 4, **settings)
    active = [start(0, 4, **settings), resume([1, 2], C, 4), start(3, 1, num_steps=10)]
    for tick in range(20):
        if tick == 1:
            active.insert(1, target)
        active = [gen for gen in active if not gen.done]
        if not active:
            break
        step(active, fn)
    np.testing.assert_array_equal(target.tokens, alone)


def test_the_null_class_samples_unconditionally_without_guidance_rows():
    calls = []
    gen = resume(np.arange(N), C, 0, num_steps=4, guidance_schedule="constant", guidance_scale=3.0)
    run(gen, make_logits_fn(calls=calls))
    assert calls == [[C]] * 4


def test_resume_errors():
    with pytest.raises(ValueError, match="hidden positions"):
        resume([N])
    with pytest.raises(ValueError, match="hidden positions"):
        resume([1, 1])
    with pytest.raises(ValueError, match="class_id"):
        resume([1], class_id=C + 1)
    with pytest.raises(ValueError, match="token ids"):
        Generation.resume(SOURCE + K, [1], 0, 0, SamplingSettings(), codebook_size=K, num_classes=C)
    with pytest.raises(ValueError, match="hidden must"):
        start_step(0, N, 8)


def test_vary_runs_mixed_start_steps_together_as_each_alone():
    fn = make_logits_fn()
    settings = SamplingSettings(num_steps=6, guidance_scale=2.0, temperature=4.0)
    hidden = [strength_mask(s, i, N) for i, s in enumerate((0.0, 0.25, 0.5, 1.0, 0.75))]
    classes, seeds = [0, 1, C, 3, 4], [5, 6, 7, 8, 9]
    sources = np.stack([SOURCE] * 5)
    together = vary(fn, sources, hidden, classes, seeds, codebook_size=K, num_classes=C, settings=settings)
    chunked = vary(fn, sources, hidden, classes, seeds, codebook_size=K, num_classes=C, settings=settings, batch_size=2)
    np.testing.assert_array_equal(together, chunked)
    for i in range(5):
        gen = Generation.resume(SOURCE, hidden[i], classes[i], seeds[i], settings, codebook_size=K, num_classes=C)
        np.testing.assert_array_equal(together[i], run(gen, fn))
    np.testing.assert_array_equal(together[0], SOURCE)
