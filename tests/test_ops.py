"""Identities of the pure axis maths (probes.ops) and statistics (calibrate.stats)."""

from __future__ import annotations

import math

import pytest
import torch

from calibrate.stats import abs_cos, auroc, pca
from probes.ops import cap, masked_mean, percentiles, project, steer, steer_coefficient, unit

B, T, D = 3, 7, 16


@pytest.fixture
def hv() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = torch.randn(B, T, D) * 3.0
    v = unit(torch.randn(D))
    return h, v


def _orth(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Component of ``h`` orthogonal to unit ``v``."""
    return h.float() - project(h, v).unsqueeze(-1) * v


# --- unit / project -------------------------------------------------------------------

def test_project_is_dot_product(hv):
    h, v = hv
    p = project(h, v)
    assert p.shape == (B, T)
    assert torch.allclose(p, (h * v).sum(-1), atol=1e-5)


def test_unit_has_norm_one():
    torch.manual_seed(1)
    x = torch.randn(D) * 17.0
    u = unit(x)
    assert math.isclose(float(u.norm()), 1.0, rel_tol=0, abs_tol=1e-6)
    assert abs_cos(u, x) == pytest.approx(1.0, abs=1e-6)
    # batched: every row unit length
    rows = unit(torch.randn(5, D) * 4)
    assert torch.allclose(rows.norm(dim=-1), torch.ones(5), atol=1e-6)


def test_unit_rejects_zero_vector():
    with pytest.raises(ValueError):
        unit(torch.zeros(D))
    with pytest.raises(ValueError):  # one zero row in a batch is enough
        unit(torch.stack([torch.ones(D), torch.zeros(D)]))


# --- cap ----------------------------------------------------------------------------------

def test_cap_below_every_projection_is_bit_identical(hv):
    h, v = hv
    tau = float(project(h, v).min()) - 1.0
    out = cap(h, v, tau)
    assert torch.equal(out, h)
    assert out.dtype == h.dtype


def test_cap_below_every_projection_is_bit_identical_bf16(hv):
    h, v = hv
    hb = h.to(torch.bfloat16)
    tau = float(project(hb, v).min()) - 1.0
    out = cap(hb, v, tau)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, hb)


def test_cap_raises_to_floor_and_never_lowers(hv):
    h, v = hv
    before = project(h, v)
    tau = float(before.median())  # about half the positions are capped
    assert bool((before < tau).any()) and bool((before > tau).any())
    out = cap(h, v, tau)
    after = project(out, v)
    assert out.shape == h.shape and out.dtype == h.dtype
    assert bool((after >= before - 1e-5).all()), "cap lowered a projection"
    assert bool((after >= tau - 1e-5).all()), "a projection stayed below the floor"
    # positions already above the floor are untouched, the others land on it
    above = before >= tau
    assert torch.equal(out[above], h[above])
    assert torch.allclose(after[~above], torch.full_like(after[~above], tau), atol=1e-5)
    # only the component along v moves
    assert torch.allclose(_orth(out, v), _orth(h, v), atol=1e-5)


def test_cap_is_idempotent(hv):
    h, v = hv
    tau = float(project(h, v).quantile(0.7))
    once = cap(h, v, tau)
    twice = cap(once, v, tau)
    assert not torch.equal(once, h)
    assert torch.allclose(twice, once, atol=1e-5)


def test_cap_per_row_tau_with_minus_inf_row(hv):
    h, v = hv
    proj = project(h, v)
    high = float(proj.max()) + 1.0  # above every projection: everything capped
    tau = torch.tensor([[high], [float("-inf")], [high]])  # [3, 1]
    out = cap(h, v, tau)
    assert out.shape == h.shape
    assert torch.equal(out[1], h[1]), "row with tau=-inf must be bit-identical"
    after = project(out, v)
    for row in (0, 2):
        assert not torch.equal(out[row], h[row])
        assert torch.allclose(after[row], torch.full((T,), high), atol=1e-4)
        assert torch.allclose(_orth(out[row], v), _orth(h[row], v), atol=1e-5)


# --- steer --------------------------------------------------------------------------------

def test_steer_adds_exactly_coeff_v(hv):
    h, v = hv
    for coeff in (2.5, -4.0, 0.0):
        out = steer(h, v, coeff)
        assert out.shape == h.shape and out.dtype == h.dtype
        assert torch.allclose(out - h, (coeff * v).expand_as(h), atol=1e-5)
        assert torch.allclose(project(out, v) - project(h, v), torch.full((B, T), coeff), atol=1e-5)
        assert torch.allclose(_orth(out, v), _orth(h, v), atol=1e-5)


def test_steer_coefficient():
    assert steer_coefficient(0.5, 40.0) == 0.5 * 40.0
    assert steer_coefficient(-2.0, 3.0) == -6.0
    assert steer_coefficient(0.7, None) == 0.7
    assert isinstance(steer_coefficient(1, None), float)


# --- masked_mean / percentiles ----------------------------------------------------------------

def test_masked_mean_matches_manual(hv):
    h, _ = hv
    torch.manual_seed(2)
    mask = torch.rand(B, T) > 0.5
    mask[:, 0] = True  # at least one position per row
    got = masked_mean(h, mask)
    assert got.shape == (B, D)
    for b in range(B):
        want = h[b][mask[b]].mean(0)
        assert torch.allclose(got[b], want, atol=1e-5)
    # a 2-d x [b, t] gives [b]
    x2 = h[..., 0]
    got2 = masked_mean(x2, mask)
    for b in range(B):
        assert math.isclose(float(got2[b]), float(x2[b][mask[b]].mean()), abs_tol=1e-5)


def test_percentiles_match_quantile():
    torch.manual_seed(3)
    x = torch.randn(101)
    qs = (5, 25, 50, 75, 99.5)
    got = percentiles(x, qs)
    assert list(got) == ["p5", "p25", "p50", "p75", "p99.5"]
    want = torch.quantile(x, torch.tensor([q / 100 for q in qs]))
    for (k, val), w in zip(got.items(), want):
        assert isinstance(val, float)
        assert math.isclose(val, float(w), abs_tol=1e-6), k
    assert percentiles(torch.empty(0), qs) == {}


# --- calibrate.stats --------------------------------------------------------------------------------

def test_pca_finds_known_direction():
    torch.manual_seed(4)
    direction = unit(torch.randn(D))
    t = torch.randn(300, 1) * 10.0
    x = t * direction + 0.1 * torch.randn(300, D) + 5.0  # offset: pca must centre
    comps, frac = pca(x, k=4)
    assert comps.shape == (4, D) and frac.shape == (4,)
    assert abs_cos(comps[0], direction) > 0.99
    assert torch.allclose(comps.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert float(frac.sum()) <= 1.0 + 1e-6
    assert float(frac[0]) > 0.9
    assert bool((frac[:-1] >= frac[1:]).all())


def test_auroc_extremes():
    pos = torch.tensor([2.0, 3.0, 4.0])
    neg = torch.tensor([-1.0, 0.0, 1.0, 1.5])
    assert auroc(pos, neg) == 1.0
    assert auroc(neg, pos) == 0.0
    same = torch.tensor([1.0, 2.0, 3.0])
    assert auroc(same, same.clone()) == 0.5
    assert auroc(torch.ones(4), torch.ones(6)) == 0.5
    assert math.isnan(auroc(torch.empty(0), neg))


def test_abs_cos_symmetric():
    torch.manual_seed(5)
    a, b = torch.randn(D), torch.randn(D)
    assert abs_cos(a, b) == pytest.approx(abs_cos(b, a), abs=1e-12)
    assert abs_cos(a, -a) == pytest.approx(1.0, abs=1e-9)
    assert abs_cos(a, -b) == pytest.approx(abs_cos(a, b), abs=1e-12)
    assert 0.0 <= abs_cos(a, b) <= 1.0
    e0, e1 = torch.eye(D)[0], torch.eye(D)[1]
    assert abs_cos(e0, e1) == 0.0
