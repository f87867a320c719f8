"""Hooks and generation: the identities the design promises, on the tests' tiny random Llama (they hold for
any weights); the comparison with transformers' own greedy loop on the real default model too."""

from __future__ import annotations

import pytest
import torch

from probes.audit import score_conversation
from probes.errors import InputError
from probes.generation import LIGHT, STRONG, CapPlan, GenerationOptions, SteerPlan, generate
from probes.hooks import hook_count, layer_hooks
from probes.models import format_chat
from probes.ops import project

LAYER = 12
CHAT = [{"role": "system", "content": "You are a pirate captain."}, {"role": "user", "content": "Who are you?"}]


def _logits(lm, text):
    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids, use_cache=False).logits


def test_cap_below_every_projection_is_bit_identical(tiny_lm, tiny_rand_axis):
    from probes.ops import cap

    text = format_chat(tiny_lm.tokenizer, CHAT) + "Arr, I be the captain of this ship."
    plain = _logits(tiny_lm, text)
    layers = tuple(range(14, 20))
    fns = {L: (lambda h: cap(h, tiny_rand_axis, -1e6)) for L in layers}
    with layer_hooks(tiny_lm.model, fns):
        capped = _logits(tiny_lm, text)
    assert torch.equal(plain, capped)


def test_generate_with_low_caps_is_identical_to_no_caps(tiny_lm, tiny_rand_axis):
    """The real capping path of generate (per-row taus, -inf rows, the active mask) changes nothing below every projection."""
    layers = tuple(range(14, 20))
    plan = CapPlan(layers, tiny_rand_axis.repeat(len(layers), 1), torch.full((len(layers),), -1e6))
    opts = GenerationOptions(max_new_tokens=10)
    prompts = [CHAT, [{"role": "user", "content": "Name a fruit."}]]
    plain = generate(tiny_lm, prompts, opts, axis=tiny_rand_axis, monitor_layer=LAYER)
    capped = generate(tiny_lm, prompts, opts, axis=tiny_rand_axis, monitor_layer=LAYER, capping=plan)
    for a, b in zip(plain, capped):
        assert a.token_ids == b.token_ids and a.scores == b.scores and b.capped


class SwitchOnAt:
    """A streamer that marks row 0 in the capping mask once it has seen ``n`` tokens."""

    def __init__(self, n, mask):
        self.n, self.mask, self.seen, self.ended = n, mask, [], False

    def put(self, step, tokens, scores, content, pre_scores):
        self.seen.append((step, tokens.clone(), scores.clone(), pre_scores.clone()))
        if step + 1 >= self.n:
            self.mask[0] = True

    def end(self):
        self.ended = True


def test_the_cap_mask_switches_capping_on_mid_generation(tiny_lm, tiny_rand_axis):
    opts = GenerationOptions(max_new_tokens=8)
    base = generate(tiny_lm, [CHAT, CHAT], opts, axis=tiny_rand_axis, monitor_layer=LAYER)
    high = max(base[0].scores) + 5.0
    plan = CapPlan((LAYER,), tiny_rand_axis.unsqueeze(0), torch.tensor([high]))
    mask = torch.tensor([False, False])
    sink = SwitchOnAt(3, mask)
    out = generate(tiny_lm, [CHAT, CHAT], opts, axis=tiny_rand_axis, monitor_layer=LAYER, capping=plan, cap_rows=mask,
                   streamer=sink)
    assert sink.ended and len(sink.seen) == len(base[0].token_ids)
    assert [t[1][0].item() for t in sink.seen] == out[0].token_ids[: len(sink.seen)]
    # the first 3 tokens are as without capping; from the 4th on row 0 is floored, row 1 never
    assert out[0].scores[:3] == pytest.approx(base[0].scores[:3], abs=1e-4)
    assert min(out[0].scores[3:]) >= high - 1e-3
    assert out[0].capped and not out[1].capped and out[1].token_ids == base[1].token_ids
    # the streamer sees each step's pre-cap score too: the floor's input, not its output
    n = len(out[0].scores)
    assert [t[3][0].item() for t in sink.seen][:n] == pytest.approx(out[0].pre_cap_scores, abs=1e-5)
    assert [t[3][1].item() for t in sink.seen][:len(out[1].scores)] == pytest.approx(out[1].scores, abs=1e-5)
    assert max(out[0].pre_cap_scores[3:]) < high - 1.0


class RaiseAt:
    """A streamer that raises one row to the strong tier once it has seen ``n`` tokens."""

    def __init__(self, n, tiers, row):
        self.n, self.tiers, self.row = n, tiers, row

    def put(self, step, tokens, scores, content, pre_scores):
        if step + 1 >= self.n:
            self.tiers[self.row] = STRONG

    def end(self):
        pass


def test_two_tiers_floor_each_row_at_its_own_tier_and_a_row_is_raised_mid_reply(tiny_lm, tiny_rand_axis):
    """Conditional capping: tier 0 rows are untouched, light rows floored at the light floor, strong rows at the
    strong one; a row the caller raises from light to strong gets the strong floor from its next token."""
    opts = GenerationOptions(max_new_tokens=8)
    base = generate(tiny_lm, [CHAT] * 4, opts, axis=tiny_rand_axis, monitor_layer=LAYER)
    light, strong = max(base[0].scores) + 5.0, max(base[0].scores) + 15.0
    plan = CapPlan((LAYER,), tiny_rand_axis.unsqueeze(0), torch.tensor([strong]), light=torch.tensor([light]))
    tiers = torch.tensor([0, LIGHT, STRONG, LIGHT])
    sink = RaiseAt(3, tiers, row=3)  # row 3: light, then strong from its 4th token
    out = generate(tiny_lm, [CHAT] * 4, opts, axis=tiny_rand_axis, monitor_layer=LAYER, capping=plan, cap_rows=tiers,
                   streamer=sink)
    assert out[0].token_ids == base[0].token_ids and not out[0].capped and set(out[0].cap_tiers) == {0}
    assert min(out[1].scores) >= light - 1e-3 and min(out[1].scores) < strong - 1 and set(out[1].cap_tiers) == {LIGHT}
    assert min(out[2].scores) >= strong - 1e-3 and set(out[2].cap_tiers) == {STRONG}
    assert out[3].cap_tiers[:3] == [LIGHT] * 3 and set(out[3].cap_tiers[3:]) == {STRONG}
    assert min(out[3].scores[:3]) >= light - 1e-3 and min(out[3].scores[:3]) < strong - 1
    assert min(out[3].scores[3:]) >= strong - 1e-3
    assert all(out[k].cap_flags == [t > 0 for t in out[k].cap_tiers] for k in range(4))


def test_a_strong_row_is_never_floored_below_the_light_tier(tiny_lm, tiny_rand_axis):
    """Where the light floor is the higher one at a layer, a flagged row keeps it: strong = max(strong, light)."""
    plan = CapPlan((LAYER, LAYER + 1), tiny_rand_axis.repeat(2, 1), torch.tensor([5.0, -1.0]),
                   light=torch.tensor([float("-inf"), 3.0]))
    assert plan.tiers()[:, STRONG].tolist() == [5.0, 3.0]
    assert plan.tiers()[:, LIGHT].tolist() == [float("-inf"), 3.0] and plan.tiers()[:, 0].isinf().all()


def test_generated_only_floors_the_last_prompt_position_and_leaves_the_rest(tiny_lm, tiny_rand_axis):
    from probes.generation import _Scorer

    plan = CapPlan((LAYER,), tiny_rand_axis.unsqueeze(0), torch.tensor([1e3]), generated_only=True)
    sc = _Scorer(2, torch.device("cpu"), None, None, plan, None)
    sc.active[:] = torch.tensor([STRONG, 0])
    h = torch.randn(2, 5, tiny_rand_axis.shape[0])
    out = sc._cap(0, h)
    assert torch.equal(out[:, :-1], h[:, :-1]) and torch.equal(out[1], h[1])  # prompt, and the uncapped row
    assert project(out[0, -1], tiny_rand_axis).item() == pytest.approx(1e3, rel=1e-4)
    step = torch.randn(2, 1, tiny_rand_axis.shape[0])  # a decoding step: its one position is floored
    assert project(sc._cap(0, step)[0, 0], tiny_rand_axis).item() == pytest.approx(1e3, rel=1e-4)
    everywhere = _Scorer(2, torch.device("cpu"), None, None, CapPlan(plan.layers, plan.vectors, plan.taus), None)
    everywhere.active[:] = torch.tensor([STRONG, 0])
    assert project(everywhere._cap(0, h)[0], tiny_rand_axis) == pytest.approx([1e3] * 5, rel=1e-4)


def test_capping_changes_logits_when_tau_is_high(tiny_lm, tiny_rand_axis):
    from probes.ops import cap

    text = format_chat(tiny_lm.tokenizer, CHAT)
    plain = _logits(tiny_lm, text)
    with layer_hooks(tiny_lm.model, {16: lambda h: cap(h, tiny_rand_axis, 50.0)}):
        capped = _logits(tiny_lm, text)
    assert not torch.allclose(plain, capped)


def test_hooks_are_removed_even_on_exceptions(tiny_lm):
    before = hook_count(tiny_lm.model)
    with pytest.raises(RuntimeError, match="boom"):
        with layer_hooks(tiny_lm.model, {3: lambda h: None, 5: [lambda h: None, lambda h: None]}):
            assert hook_count(tiny_lm.model) == before + 3
            raise RuntimeError("boom")
    assert hook_count(tiny_lm.model) == before
    with pytest.raises(InputError, match="out of range"):
        with layer_hooks(tiny_lm.model, {3: lambda h: None, 999: lambda h: None}):
            pass
    assert hook_count(tiny_lm.model) == before


def test_generation_scores_equal_output_hidden_states(tiny_lm, tiny_rand_axis):
    """Scores taken in the hook during cached generation == projections of
    output_hidden_states (layer L = hidden_states[L+1]) at the producing positions."""
    prompts = [CHAT, [{"role": "user", "content": "What is the capital of France?"}]]
    outs = generate(tiny_lm, prompts, GenerationOptions(max_new_tokens=12), axis=tiny_rand_axis, monitor_layer=LAYER)
    for msgs, g in zip(prompts, outs):
        assert len(g.scores) == len(g.token_ids) > 0
        prompt_ids = tiny_lm.tokenizer(format_chat(tiny_lm.tokenizer, msgs), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + g.token_ids])
        with torch.no_grad():
            hs = tiny_lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[LAYER + 1][0]
        n = len(prompt_ids)
        expected = project(hs[n - 1 : n - 1 + len(g.token_ids)], tiny_rand_axis)
        assert torch.allclose(torch.tensor(g.scores), expected, atol=1e-3), (g.scores[:4], expected[:4])


def test_generation_makes_one_forward_pass_per_token(tiny_lm, tiny_rand_axis):
    calls = []
    handle = tiny_lm.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        g = generate(tiny_lm, [CHAT], GenerationOptions(max_new_tokens=10), axis=tiny_rand_axis, monitor_layer=LAYER)[0]
    finally:
        handle.remove()
    steps = len(g.token_ids) + (1 if g.finish_reason == "stop" else 0)
    assert len(calls) == steps


def test_batched_generation_matches_single(tiny_lm, tiny_rand_axis):
    """Left padding and position ids: a row's tokens and scores do not depend on its batch mates."""
    a = [{"role": "user", "content": "Name a colour."}]
    b = [{"role": "user", "content": "Write one sentence about the history of the printing press in Europe."}]
    opts = GenerationOptions(max_new_tokens=8)
    single = generate(tiny_lm, [a], opts, axis=tiny_rand_axis, monitor_layer=LAYER)[0]
    both = generate(tiny_lm, [b, a], opts, axis=tiny_rand_axis, monitor_layer=LAYER)[1]
    assert single.token_ids == both.token_ids
    assert torch.allclose(torch.tensor(single.scores), torch.tensor(both.scores), atol=1e-3)


def test_audit_never_takes_template_text_for_content(tiny_lm, tiny_rand_axis):
    """An assistant reply 'a' must be found after its turn header, not inside '<|im_start|>'."""
    turns = score_conversation(tiny_lm, [{"role": "user", "content": "Pick a letter"}, {"role": "assistant", "content": "a"}],
                               tiny_rand_axis, LAYER)
    assert turns[0].tokens == ["a"] and len(turns[0].scores) == 1


def test_audit_scores_equal_generation_scores(lm, rand_axis):
    """Teacher forcing a reply scores it as generation did: on the real model, whose replies tokenize back to
    the tokens it generated (a random model's token soup does not)."""
    g = generate(lm, [CHAT], GenerationOptions(max_new_tokens=16), axis=rand_axis, monitor_layer=LAYER)[0]
    turns = score_conversation(lm, CHAT + [{"role": "assistant", "content": g.text}], rand_axis, LAYER)
    assert len(turns) == 1 and turns[0].index == 2
    assert "".join(turns[0].tokens).strip() == g.text.strip()
    assert len(turns[0].scores) == len(g.scores)
    assert torch.allclose(torch.tensor(turns[0].scores), torch.tensor(g.scores), atol=1e-3)


def test_capping_in_generation_raises_scores_and_records_flag(tiny_lm, tiny_rand_axis):
    opts = GenerationOptions(max_new_tokens=8)
    base = generate(tiny_lm, [CHAT], opts, axis=tiny_rand_axis, monitor_layer=LAYER)[0]
    high = max(base.scores) + 5.0
    plan = CapPlan((LAYER,), tiny_rand_axis.unsqueeze(0), torch.tensor([high]))
    capped = generate(tiny_lm, [CHAT, CHAT], opts, axis=tiny_rand_axis, monitor_layer=LAYER, capping=plan,
                      cap_rows=torch.tensor([True, False]))
    assert capped[0].capped and not capped[1].capped
    assert min(capped[0].scores) >= high - 1e-3  # the monitor layer is floored
    assert capped[0].pre_cap_scores[0] == pytest.approx(base.scores[0], abs=1e-3)  # pre-cap of the first token
    assert capped[1].token_ids == base.token_ids  # the uncapped row is untouched


def test_steering_moves_scores(tiny_lm, tiny_rand_axis):
    opts = GenerationOptions(max_new_tokens=6)
    base = generate(tiny_lm, [CHAT], opts, axis=tiny_rand_axis, monitor_layer=LAYER)[0]
    up = generate(tiny_lm, [CHAT], opts, axis=tiny_rand_axis, monitor_layer=LAYER,
                  steering=SteerPlan(LAYER, tiny_rand_axis, 10.0))[0]
    assert up.scores[0] == pytest.approx(base.scores[0] + 10.0, abs=1e-3)


@pytest.mark.parametrize("temperature", [5e-324, 2.2e-308, 1e-30, 1e-6])
def test_sampling_at_a_vanishing_temperature_is_greedy_not_nan(temperature):
    """Found by the schema fuzzer: 1/T overflowed, inf - inf gave nan, and multinomial raised (a 500)."""
    from probes.generation import _sample

    logits = torch.tensor([[17.6, 19.9, 21.6, 15.9, 12.4], [3.0, -1.0, 8.0, 8.5, 0.0]])
    for top_p in (1.0, 0.5):
        got = _sample(logits, GenerationOptions(temperature=temperature, top_p=top_p), torch.Generator().manual_seed(0))
        assert got.tolist() == logits.argmax(-1).tolist()


def test_sampling_at_normal_temperatures_is_unchanged_by_the_shift():
    from probes.generation import _sample

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1)) * 4
    for t in (0.3, 1.0, 2.0):
        a = _sample(logits, GenerationOptions(temperature=t), torch.Generator().manual_seed(7))
        b = torch.multinomial(torch.softmax(logits / t, -1), 1, generator=torch.Generator().manual_seed(7)).squeeze(-1)
        assert a.tolist() == b.tolist()


PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Write a haiku about the sea."}], CHAT]


@pytest.mark.parametrize("model", ["tiny_lm", pytest.param("lm", marks=pytest.mark.smollm)])
def test_greedy_generate_gives_exactly_transformers_generate(request, model):
    """Our decoding loop is the reference loop: the same tokens as transformers' own greedy
    ``model.generate``, batched with the same left padding, and for each prompt alone; on the real model
    (which ends its turns) a stop is among them."""
    from probes.generation import encode_prompts, stop_token_ids

    lm = request.getfixturevalue(model)

    stops = sorted(stop_token_ids(lm))
    ours = generate(lm, PROMPTS, GenerationOptions(max_new_tokens=32))

    def theirs(prompts):
        enc = encode_prompts(lm, prompts)
        out = lm.model.generate(**enc, max_new_tokens=32, do_sample=False, temperature=None, top_p=None, top_k=None,
                                eos_token_id=stops, pad_token_id=lm.tokenizer.pad_token_id)
        rows = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))  # theirs keeps the end-of-turn token
            rows.append(row[:cut])
        return rows

    assert [g.token_ids for g in ours] == theirs(PROMPTS)
    for p, g in zip(PROMPTS, ours):
        assert generate(lm, [p], GenerationOptions(max_new_tokens=32))[0].token_ids == theirs([p])[0] == g.token_ids
    if model == "lm":  # the comparison covers a stop, not only the length (a random model never ends its turn)
        assert sum(g.finish_reason == "stop" for g in ours) >= 1


def test_each_row_keeps_its_own_options(tiny_lm):
    """Per-request options in one batch: each row stops at its own length and samples with its own seed,
    exactly as it would alone."""
    opts = [GenerationOptions(max_new_tokens=4), GenerationOptions(max_new_tokens=12, temperature=0.9, seed=7),
            GenerationOptions(max_new_tokens=9)]
    together = generate(tiny_lm, PROMPTS, opts)
    alone = [generate(tiny_lm, [p], o)[0] for p, o in zip(PROMPTS, opts)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert len(together[0].token_ids) == 4 and together[0].finish_reason == "length"
    with pytest.raises(ValueError, match="2 options for 3 prompts"):
        generate(tiny_lm, PROMPTS, opts[:2])


def test_the_detokeniser_is_linear_and_concatenates_to_the_text(tiny_lm):
    from probes.generation import Detokenizer, token_pieces

    ids = tiny_lm.tokenizer("Arr, the sea! Über café — naïve 🦜 ships, 42 of them.", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tiny_lm.tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tiny_lm.tokenizer.decode(ids, skip_special_tokens=True)
    d, seen = Detokenizer(tiny_lm.tokenizer), []
    calls = []
    real = tiny_lm.tokenizer.decode
    try:
        tiny_lm.tokenizer.decode = lambda x, **kw: calls.append(len(x)) or real(x, **kw)
        seen = [d.push(i) for i in ids]
    finally:
        tiny_lm.tokenizer.decode = real
    assert seen == pieces and max(calls) <= 8  # a short window per token, never the whole text


def test_capping_below_the_monitor_layer_keeps_the_true_pre_cap_score(tiny_lm, tiny_rand_axis):
    """With capping at layers below the monitor layer, the monitor layer only ever sees the capped
    stream; the pre-cap score must still be the uncapped model's score of the same text (what a
    teacher-forced audit finds), not the capped stream's, or the drift tracker follows a floored score."""
    layers, monitor = tuple(range(8, 12)), LAYER  # every capping layer below the monitor layer
    plan = CapPlan(layers, tiny_rand_axis.repeat(len(layers), 1), torch.full((len(layers),), 40.0))
    g = generate(tiny_lm, [CHAT], GenerationOptions(max_new_tokens=12), axis=tiny_rand_axis, monitor_layer=monitor,
                 capping=plan)[0]
    assert g.capped and all(g.cap_flags)
    ids = torch.tensor([tiny_lm.tokenizer(format_chat(tiny_lm.tokenizer, CHAT), add_special_tokens=False)["input_ids"]
                        + g.token_ids])
    with torch.no_grad():
        hs = tiny_lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[monitor + 1][0]
    p0 = ids.shape[1] - len(g.token_ids)  # the first generated token's position
    uncapped = project(hs[p0 - 1: ids.shape[1] - 1], tiny_rand_axis).tolist()
    assert g.pre_cap_scores == pytest.approx(uncapped, abs=1e-3)  # the true pre-cap score
    # the capped stream itself scores differently at the monitor layer (the bug this guards against)
    assert max(abs(a - b) for a, b in zip(g.scores, g.pre_cap_scores)) > 1.0
