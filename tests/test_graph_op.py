"""The graph-safe form of the monitor (``probes.graph_op``, ``probes.hooks.watched_layers``,
``probes.vllm_hooks.VLLMMonitor``) without vLLM: the op's identities, the op inside a real model (the tiny
Llama) eager and under ``torch.compile`` with the cap mask changed between calls, and the host side's
bookkeeping of rows, masks and scores."""

from __future__ import annotations

import pytest
import torch

from probes.generation import CapPlan
from probes.graph_op import WatchState
from probes.hooks import watched_count, watched_layers
from probes.ops import cap, project, unit
from probes.vllm_hooks import StepRows, VLLMMonitor


def _state(d=16, rows=8, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = unit(torch.randn(k, d, generator=g))
    return WatchState(unit(torch.randn(d, generator=g)), vectors, torch.tensor([0.5, 1.0]), rows, "cpu"), g


def test_the_op_scores_every_row_and_caps_only_masked_rows():
    st, g = _state()
    hidden, res = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    st.mask[:5] = torch.tensor([1.0, 0, 1, 0, 0])
    st.scores.fill_(7.0)
    out = st(hidden, res, 1, 0, 1)
    stream = hidden + res
    want = cap(stream, st.vectors[1], st.taus[1])
    assert torch.equal(st.scores[0, :5], project(stream, st.axis))
    # masked rows get the paper's floor on the stream (the change on the hidden part), the others stay bit-identical
    assert torch.allclose((out + res)[[0, 2]], want[[0, 2]], atol=1e-6)
    assert torch.equal(out[[1, 3, 4]], hidden[[1, 3, 4]])
    assert torch.allclose(st.scores[1, :5], project(out + res, st.axis), atol=1e-5)
    assert (st.scores[:, 5:] == 7.0).all()  # rows past the batch (a graph's padding) are left alone
    assert out.data_ptr() != hidden.data_ptr()


def test_the_op_is_a_no_op_where_nothing_is_capped_or_tau_is_below_every_projection():
    st, g = _state()
    hidden, res = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    assert torch.equal(st(hidden, res, 0, -1, -1), hidden)  # mask all zero
    st.mask.fill_(1.0)
    st.taus.fill_(-1e9)
    assert torch.equal(st(hidden, res, 0, -1, -1), hidden)
    assert torch.equal(st(hidden, res, -1, 0, -1), hidden)  # a scoring-only layer


def _slots(tiny_axis, capping_layers):
    slots = {layer: (k, -1, -1) for k, layer in enumerate(capping_layers)}
    m = tiny_axis.monitor_layer
    slots[m] = (slots.get(m, (-1,))[0], 0, 1 if m in capping_layers else -1)
    return slots


def test_watched_layers_score_the_residual_stream_and_restore_the_model(tiny_lm, tiny_axis):
    """In a transformers model the op's score at layer L is the projection of ``hidden_states[L + 1]``."""
    ids = tiny_lm.tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    st = WatchState(tiny_axis.unit(), None, None, ids.numel(), "cpu")
    layer = tiny_axis.monitor_layer
    cls = type(tiny_lm.model.model.layers[layer])
    with torch.no_grad(), watched_layers(tiny_lm.model, st, {layer: (-1, 0, -1)}, residual=False):
        assert watched_count(tiny_lm.model) == 1
        hs = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(st.scores[0, :ids.numel()], project(hs[layer + 1][0], tiny_axis.unit()), atol=1e-5)
    assert watched_count(tiny_lm.model) == 0 and type(tiny_lm.model.model.layers[layer]) is cls
    with pytest.raises(Exception, match="out of range"), watched_layers(tiny_lm.model, st, {99: (-1, 0, -1)}):
        pass


def test_the_op_survives_torch_compile_with_the_mask_changed_between_calls(tiny_lm, tiny_axis, tiny_axis_dir):
    """Compiled (inductor) and eager agree on logits and scores for three cap masks written into the static
    buffer between calls; capping moves only the masked sequences. (``bench/gpu_check.py`` does the same on
    the bundled model with CUDA graphs.)"""
    from probes.artifacts import load_capping

    capping = load_capping(tiny_axis_dir)
    plan = CapPlan(tuple(capping.layers), unit(capping.vectors), torch.tensor(capping.taus))
    batch, length = 3, 10
    st = WatchState(tiny_axis.unit(), plan.vectors, plan.taus * 0 + 1e3, batch * length, "cpu")  # floors every row
    ids = torch.randint(5, 200, (batch, length), generator=torch.Generator().manual_seed(1))
    masks = {}
    for name, seqs in (("0 and 2", [0, 2]), ("1", [1]), ("none", [])):
        m = torch.zeros(batch, length)
        m[seqs] = 1.0
        masks[name] = m.reshape(-1)

    def forward(x):
        return tiny_lm.model(input_ids=x, use_cache=False).logits

    with torch.no_grad(), watched_layers(tiny_lm.model, st, _slots(tiny_axis, plan.layers), residual=False):
        eager = {}
        for name, m in masks.items():
            st.mask.copy_(m)
            eager[name] = (forward(ids).clone(), st.scores.clone())
        compiled = torch.compile(forward)
        for _ in range(2):
            for name, m in masks.items():
                st.mask.copy_(m)
                logits = compiled(ids)
                assert torch.allclose(logits, eager[name][0], atol=1e-4), name
                assert torch.allclose(st.scores, eager[name][1], atol=1e-3), name
    capped, free = eager["0 and 2"][0], eager["none"][0]
    assert not torch.allclose(capped[0], free[0]) and torch.equal(capped[1], free[1])
    torch._dynamo.reset()


def test_the_monitor_maps_rows_to_requests_and_masks_the_capped_ones():
    d = 8
    plan = CapPlan((3, 4), unit(torch.randn(2, d)), torch.tensor([0.0, 0.0]))
    mon = VLLMMonitor(unit(torch.randn(d)), 3, plan, rows=16)
    assert mon.slots == {3: (0, 0, 1), 4: (1, -1, -1)}
    # a: a 4-row prefill chunk that samples; b: one decode row, capped; None: not ours; c: a partial chunk
    step = StepRows(keys=["a", "b", None, "c"], starts=[0, 4, 5, 7, 10], sampled=[True, True, True, False])
    mon.capped = {"b", "c"}
    mon.begin(step)
    assert mon.state.mask[:10].tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 1, 1] and mon.state.mask[10:].sum() == 0
    assert mon.take() == {}, "rows the op did not write this step have no score"
    mon.begin(step)
    mon.state.scores[0, [3, 4]] = torch.tensor([-1.5, -2.5])  # what the op writes: pre-cap, then post-cap
    mon.state.scores[1, [3, 4]] = torch.tensor([-1.0, -2.0])
    assert mon.take() == {"a": (-1.0, -1.5), "b": (-2.0, -2.5)}
    mon.capped = set()
    mon.begin(step)
    assert mon.state.mask.sum() == 0  # a request no longer capped is cleared
    with pytest.raises(ValueError, match="below the monitor layer"):
        VLLMMonitor(unit(torch.randn(d)), 4, plan, rows=16)


def test_tensor_parallel_ranks_apply_rank_zeros_mask():
    """Every rank calls the broadcast each step (a collective); what rank 0 sends is what each rank applies."""
    d, sent = 8, []
    plan = CapPlan((3,), unit(torch.randn(1, d)), torch.tensor([0.0]))
    rank0 = VLLMMonitor(unit(torch.randn(d)), 3, plan, rows=8, broadcast=lambda t: sent.append(t.clone()))
    step = StepRows(keys=["a", "b"], starts=[0, 2, 3], sampled=[True, True])
    rank0.capped = {"b"}
    rank0.begin(step)
    rank1 = VLLMMonitor(unit(torch.randn(d)), 3, plan, rows=8, broadcast=lambda t: t.copy_(sent[-1]), rank=1)
    rank1.capped = {"a"}  # a rank other than 0 ignores its own set: it applies what rank 0 sends
    rank1.begin(step)
    assert rank1.state.mask.tolist() == rank0.state.mask.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    rank0.capped = set()
    rank0.begin(step)
    assert len(sent) == 2 and sent[-1].sum() == 0
