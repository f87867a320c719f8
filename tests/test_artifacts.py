"""Axis and capping artifacts: roundtrips, validation, and the paper's .pt imports."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from probes import ops
from probes.artifacts import (
    AXIS_FILE,
    AXIS_JSON,
    AxisArtifact,
    CappingConfig,
    import_paper_axis,
    import_paper_capping,
    load_axis,
    load_capping,
)
from probes.errors import ArtifactError, ArtifactMismatchError

N_LAYERS, HIDDEN = 4, 16
REPO = Path(__file__).resolve().parents[1]


def _artifact() -> AxisArtifact:
    g = torch.Generator().manual_seed(0)
    return AxisArtifact(
        axis=torch.randn(N_LAYERS, HIDDEN, generator=g),
        model_id="tiny/test-model",
        monitor_layer=2,
        calibration={"layers": {"2": {"mean_norm": 12.5, "p5": -3.25, "p50": 1.5}}},
        provenance={"roles": 3, "note": "unit test"},
        default_vector=torch.randn(N_LAYERS, HIDDEN, generator=g),
        role_vectors={"pirate": torch.randn(N_LAYERS, HIDDEN, generator=g),
                      "ghost": torch.randn(N_LAYERS, HIDDEN, generator=g) * 5},
    )


# --- AxisArtifact -----------------------------------------------------------------------

def test_axis_roundtrip(tmp_path):
    art = _artifact()
    folder = art.save(tmp_path / "axis")
    back = load_axis(folder)
    assert torch.equal(back.axis, art.axis)
    assert torch.equal(back.default_vector, art.default_vector)
    assert set(back.role_vectors) == {"pirate", "ghost"}
    for k, v in art.role_vectors.items():  # stored as float16
        assert back.role_vectors[k].dtype == torch.float32
        assert torch.allclose(back.role_vectors[k], v, rtol=1e-3, atol=1e-2)
    assert back.calibration == art.calibration
    assert back.provenance == art.provenance
    assert back.monitor_layer == 2 and back.model_id == "tiny/test-model"
    assert (back.n_layers, back.hidden_size) == (N_LAYERS, HIDDEN)
    assert back.mean_norm() == 12.5
    assert torch.allclose(back.unit(), ops.unit(art.axis[2]))
    assert back.path == folder
    # loading via the axis.json path works too; roles=False skips role vectors
    assert load_axis(folder / AXIS_JSON, roles=False).role_vectors == {}


def test_axis_json_contents(tmp_path):
    folder = _artifact().save(tmp_path / "axis")
    meta = json.loads((folder / AXIS_JSON).read_text())
    assert meta["format_version"] == 1
    assert meta["kind"] == "axis"
    assert "hidden_states[L+1]" in meta["layer_convention"]
    assert "output of decoder block L" in meta["layer_convention"]
    assert meta["n_layers"] == N_LAYERS and meta["hidden_size"] == HIDDEN
    assert meta["roles"] == ["ghost", "pirate"]


def test_check_names_every_mismatch_in_one_error():
    art = _artifact()
    art.check("tiny/test-model", HIDDEN, N_LAYERS)  # fits: no error
    art.check("another/model", HIDDEN, N_LAYERS)  # model id only checked when strict
    with pytest.raises(ArtifactMismatchError) as ei:
        art.check(None, 32, 6)
    msg = str(ei.value)
    assert "hidden size 16" in msg and "32" in msg
    assert "4 layers" in msg and "6" in msg
    with pytest.raises(ArtifactMismatchError, match="model id"):
        art.check("another/model", HIDDEN, N_LAYERS, strict_model_id=True)


def test_corrupted_axis_tensors(tmp_path):
    folder = _artifact().save(tmp_path / "axis")
    (folder / AXIS_FILE).write_bytes(b"\x00garbage, definitely not safetensors\xff" * 8)
    with pytest.raises(ArtifactError, match="corrupted"):
        load_axis(folder)


def test_missing_axis_json(tmp_path):
    folder = _artifact().save(tmp_path / "axis")
    (folder / AXIS_JSON).unlink()
    with pytest.raises(ArtifactError, match="not found"):
        load_axis(folder)
    with pytest.raises(ArtifactError):
        load_axis(tmp_path / "does-not-exist")


def test_unsupported_format_version(tmp_path):
    folder = _artifact().save(tmp_path / "axis")
    meta = json.loads((folder / AXIS_JSON).read_text())
    meta["format_version"] = 99
    (folder / AXIS_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version"):
        load_axis(folder)


def test_shape_disagreeing_with_json(tmp_path):
    folder = _artifact().save(tmp_path / "axis")
    meta = json.loads((folder / AXIS_JSON).read_text())
    meta["n_layers"] = N_LAYERS + 1
    (folder / AXIS_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="disagrees"):
        load_axis(folder)


# --- CappingConfig ----------------------------------------------------------------------

def _capping() -> CappingConfig:
    g = torch.Generator().manual_seed(1)
    return CappingConfig(id="test-cap", layers=[1, 3], vectors=torch.randn(2, HIDDEN, generator=g) * 7,
                         taus=[-1.25, 0.5], model_id="tiny/test-model", provenance={"src": "test"})


def test_capping_vectors_normalised():
    cfg = _capping()
    assert torch.allclose(cfg.vectors.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_capping_roundtrip(tmp_path):
    cfg = _capping()
    folder = cfg.save(tmp_path / "cap")
    back = load_capping(folder)
    assert back.id == "test-cap" and back.layers == [1, 3] and back.taus == [-1.25, 0.5]
    assert back.model_id == "tiny/test-model" and back.provenance == {"src": "test"}
    assert torch.allclose(back.vectors, cfg.vectors, atol=1e-6)
    meta = json.loads((folder / "capping.json").read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "capping" and meta["hidden_size"] == HIDDEN


def test_two_tier_capping_roundtrip_and_checks(tmp_path):
    cfg = _capping()
    assert cfg.light_taus is None and cfg.conditional and cfg.tokens == "all"  # no floor until flagged
    two = CappingConfig(id="two", layers=[1, 3], vectors=cfg.vectors, taus=[2.0, 3.0], light_taus=[None, 1.0],
                        tokens="generated")
    back = load_capping(two.save(tmp_path / "two"))
    assert back.light_taus == [None, 1.0] and back.tokens == "generated" and back.conditional
    assert back.light_floors() == [float("-inf"), 1.0]
    meta = json.loads((tmp_path / "two" / "capping.json").read_text())
    assert meta["light_taus"] == [None, 1.0] and meta["tokens"] == "generated"
    assert meta["format_version"] == 2  # a reader of version 1 refuses it rather than serve one tier
    every = CappingConfig(id="every", layers=[1, 3], vectors=cfg.vectors, taus=[2.0, 3.0], light_taus=[2.0, 3.0])
    assert not every.conditional  # its light tier is its floor: every session from its first token
    assert "tokens" not in every.meta() and "light_taus" not in cfg.meta()  # earlier readers see what they knew
    for bad in ({"light_taus": [1.0]}, {"light_taus": [None, None]}, {"light_taus": [float("nan"), 1.0]},
                {"tokens": "prompt"}):
        with pytest.raises(ArtifactError):
            CappingConfig(id="bad", layers=[1, 3], vectors=cfg.vectors, taus=[2.0, 3.0], **bad)


def test_capping_mismatched_counts():
    with pytest.raises(ArtifactError):  # 2 layers, 3 vectors
        CappingConfig(id="x", layers=[1, 2], vectors=torch.randn(3, HIDDEN), taus=[0.0, 0.0])
    with pytest.raises(ArtifactError):  # 2 layers, 1 tau
        CappingConfig(id="x", layers=[1, 2], vectors=torch.randn(2, HIDDEN), taus=[0.0])
    with pytest.raises(ArtifactError):  # non-finite tau
        CappingConfig(id="x", layers=[1], vectors=torch.randn(1, HIDDEN), taus=[float("nan")])


def test_capping_check():
    cfg = _capping()
    cfg.check(HIDDEN, N_LAYERS)
    with pytest.raises(ArtifactMismatchError, match=r"layers \[3\]"):
        cfg.check(HIDDEN, 3)
    with pytest.raises(ArtifactMismatchError, match="hidden size"):
        cfg.check(HIDDEN * 2, N_LAYERS)


# --- the paper's .pt files ------------------------------------------------------------------

def test_import_paper_axis_dict_and_bare_tensor(tmp_path):
    axis = torch.randn(4, 16)
    torch.save({"axis": axis, "meta": "whatever"}, tmp_path / "assistant_axis.pt")
    art = import_paper_axis(tmp_path / "assistant_axis.pt", model_id="m")
    assert torch.equal(art.axis, axis)
    assert art.monitor_layer == 2 and art.model_id == "m"
    assert art.provenance["source"] == "paper"

    torch.save(axis, tmp_path / "bare.pt")
    art2 = import_paper_axis(tmp_path / "bare.pt", model_id="m", monitor_layer=1)
    assert torch.equal(art2.axis, axis) and art2.monitor_layer == 1

    torch.save({"not_axis": axis}, tmp_path / "wrong.pt")
    with pytest.raises(ArtifactError):
        import_paper_axis(tmp_path / "wrong.pt", model_id="m")
    with pytest.raises(ArtifactError):
        import_paper_axis(tmp_path / "missing.pt", model_id="m")


@dataclass
class _Payload:
    """A custom class: an honest .pt loader with weights_only=True must refuse it."""

    axis: torch.Tensor


def _side_effect(path: str) -> torch.Tensor:
    Path(path).write_text("executed")
    return torch.zeros(4, 16)


class _Evil:
    """Unpickling this would call _side_effect (arbitrary code)."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (_side_effect, (self.sentinel,))


def test_import_paper_axis_refuses_pickled_objects(tmp_path):
    torch.save(_Payload(torch.randn(4, 16)), tmp_path / "custom.pt")
    with pytest.raises(ArtifactError, match="weights_only"):
        import_paper_axis(tmp_path / "custom.pt", model_id="m")

    sentinel = tmp_path / "sentinel.txt"
    torch.save({"axis": _Evil(str(sentinel))}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError):
        import_paper_axis(tmp_path / "evil.pt", model_id="m")
    assert not sentinel.exists(), "the pickled callable was executed"
    with pytest.raises(ArtifactError):
        import_paper_capping(tmp_path / "evil.pt")
    assert not sentinel.exists()


def _paper_upper_cap(h: torch.Tensor, u: torch.Tensor, c: float) -> torch.Tensor:
    """The paper's cap, written independently: h <- h - max(<h, û> - c, 0) û, û = u/|u|."""
    uh = u / u.norm()
    excess = ((h * uh).sum(-1) - c).clamp_min(0.0)
    return h - excess.unsqueeze(-1) * uh


def _paper_file(tmp_path: Path, assistant: torch.Tensor, extra_experiment: bool = False) -> Path:
    g = torch.Generator().manual_seed(7)
    u2 = -3.0 * assistant + 0.8 * torch.randn(HIDDEN, generator=g)  # NOT unit, points away
    u3 = -0.5 * assistant + 0.2 * torch.randn(HIDDEN, generator=g)
    experiments = [{"id": "exp_a", "interventions": [{"vector": "layer_2", "cap": -1.5},
                                                     {"vector": "layer_3", "cap": -0.5}]}]
    if extra_experiment:
        experiments.append({"id": "exp_b", "interventions": [{"vector": "layer_3", "cap": 2.0}]})
    obj = {"vectors": {"layer_2": {"vector": u2, "layer": 2}, "layer_3": {"vector": u3, "layer": 3}},
           "experiments": experiments}
    path = tmp_path / "capping_config.pt"
    torch.save(obj, path)
    return path


def test_import_paper_capping_matches_paper_cap(tmp_path):
    assistant = ops.unit(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(3)))
    path = _paper_file(tmp_path, assistant)
    obj = torch.load(path, weights_only=True)
    cfg = import_paper_capping(path, model_id="m")
    assert cfg.id == "paper:exp_a" and cfg.layers == [2, 3] and cfg.taus == [1.5, 0.5]
    assert cfg.model_id == "m" and cfg.provenance["experiment"] == "exp_a"
    assert torch.allclose(cfg.vectors.norm(dim=-1), torch.ones(2), atol=1e-6)
    for k in range(2):  # converted vectors point toward the Assistant
        assert float(cfg.vectors[k] @ assistant) > 0

    torch.manual_seed(11)
    for k, iv in enumerate(obj["experiments"][0]["interventions"]):
        u = obj["vectors"][iv["vector"]]["vector"]
        c = iv["cap"]
        h = torch.randn(3, 7, HIDDEN) * 3.0
        over = (h * (u / u.norm())).sum(-1) > c
        assert bool(over.any()) and bool((~over).any()), "test must exercise both branches"
        want = _paper_upper_cap(h, u, c)
        got = ops.cap(h, cfg.vectors[k], cfg.taus[k])
        assert torch.allclose(got, want, atol=1e-5), f"intervention {k} differs from the paper's cap"
        assert not torch.allclose(want, h)


def test_import_paper_capping_experiment_selection(tmp_path):
    assistant = ops.unit(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(3)))
    path = _paper_file(tmp_path, assistant, extra_experiment=True)
    assert import_paper_capping(path).id == "paper:exp_a"  # default: the first
    cfg_b = import_paper_capping(path, experiment_id="exp_b")
    assert cfg_b.id == "paper:exp_b" and cfg_b.layers == [3] and cfg_b.taus == [-2.0]
    with pytest.raises(ArtifactError) as ei:
        import_paper_capping(path, experiment_id="nope")
    msg = str(ei.value)
    assert "nope" in msg and "available" in msg and "exp_a" in msg and "exp_b" in msg


def test_import_paper_capping_wrong_layout(tmp_path):
    torch.save({"vectors": {}}, tmp_path / "bad.pt")
    with pytest.raises(ArtifactError):
        import_paper_capping(tmp_path / "bad.pt")


# --- no unsafe deserialisation anywhere -------------------------------------------------------

def test_no_unsafe_loading_in_source_tree():
    offenders = []
    scanned = 0
    for top in ("probes", "monitor", "dashboard"):
        root = REPO / top
        assert root.is_dir(), root
        for p in root.rglob("*"):
            if "__pycache__" in p.parts or not p.is_file():
                continue
            scanned += 1
            data = p.read_bytes()
            for needle in (b"weights_only=False", b"pickle.load", b"import pickle", b"cPickle", b"dill."):
                if needle in data:
                    offenders.append(f"{p.relative_to(REPO)}: {needle.decode()}")
            if p.suffix == ".py":
                # every torch.load call passes weights_only=True
                for m in re.finditer(rb"torch\.load\((.*)", data):  # the rest of the line
                    if b"weights_only=True" not in m.group(1):
                        offenders.append(f"{p.relative_to(REPO)}: torch.load without weights_only=True")
    assert scanned > 0
    assert not offenders, offenders
