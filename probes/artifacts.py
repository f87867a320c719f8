"""Typed, versioned artifacts: the axis and the capping config.

An axis artifact is a folder::

    axis.json                 metadata (format_version, model_id, hidden_size, n_layers,
                              monitor_layer, calibration per layer, provenance)
    axis.safetensors          tensor "axis" [n_layers, hidden]  (layer L = output of block L)
    default_vector.safetensors tensor "default" [n_layers, hidden]
    role_vectors.safetensors  one [n_layers, hidden] tensor per role name
    capping.json + capping.safetensors   the capping config (optional)
    report.json, *.png        the compute-axis / calibrate-capping reports (optional)

Loading checks the artifact against a model and names every mismatch. The
paper's published ``.pt`` files are imported with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probes.errors import ArtifactError, ArtifactMismatchError
from probes.ops import unit

FORMAT_VERSION = 1
# a capping config with tiers or generated-only floors is version 2: a reader of version 1 would serve it
# as a one-tier config and refuse it instead
CAPPING_TIERS_VERSION = 2
AXIS_JSON, AXIS_FILE, DEFAULT_FILE, ROLES_FILE = "axis.json", "axis.safetensors", "default_vector.safetensors", "role_vectors.safetensors"
CAP_JSON, CAP_FILE = "capping.json", "capping.safetensors"


@dataclass
class AxisArtifact:
    axis: torch.Tensor  # [n_layers, hidden], points toward the Assistant
    model_id: str
    monitor_layer: int
    calibration: dict = field(default_factory=dict)  # {"layers": {str(L): {...}}}
    provenance: dict = field(default_factory=dict)
    default_vector: torch.Tensor | None = None  # [n_layers, hidden]
    role_vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_layers(self) -> int:
        return int(self.axis.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.axis.shape[1])

    def unit(self, layer: int | None = None) -> torch.Tensor:
        """Unit axis ``[hidden]`` at ``layer`` (the monitor layer by default)."""
        return unit(self.axis[self.monitor_layer if layer is None else layer])

    def layer_stats(self, layer: int | None = None) -> dict:
        return self.calibration.get("layers", {}).get(str(self.monitor_layer if layer is None else layer), {})

    def mean_norm(self, layer: int | None = None) -> float | None:
        return self.layer_stats(layer).get("mean_norm")

    def fingerprint(self) -> str:
        """Short content hash of the axis tensor; capping configs record the axis they came from."""
        return hashlib.sha256(self.axis.float().contiguous().numpy().tobytes()).hexdigest()[:16]

    def meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": "axis", "model_id": self.model_id, "fingerprint": self.fingerprint(),
                "hidden_size": self.hidden_size, "n_layers": self.n_layers,
                "monitor_layer": self.monitor_layer, "layer_convention": "output of decoder block L = hidden_states[L+1]",
                "calibration": self.calibration, "provenance": self.provenance,
                "roles": sorted(self.role_vectors)}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / AXIS_JSON).exists() and _fingerprint_in(folder / AXIS_JSON) != self.fingerprint():
            # a new axis over an old one: what was derived from the old axis no longer applies
            for stale in (CAP_JSON, CAP_FILE, "capping_report.json", "capping_pareto.png", "steering_report.json", ROLES_FILE):
                (folder / stale).unlink(missing_ok=True)
        save_file({"axis": self.axis.float().contiguous()}, folder / AXIS_FILE)
        if self.default_vector is not None:
            save_file({"default": self.default_vector.float().contiguous()}, folder / DEFAULT_FILE)
        if self.role_vectors:
            save_file({k: v.to(torch.float16).contiguous() for k, v in self.role_vectors.items()}, folder / ROLES_FILE)
        (folder / AXIS_JSON).write_text(json.dumps(self.meta(), indent=1, sort_keys=True))
        self.path = folder
        return folder

    def check(self, model_id: str | None, hidden_size: int, n_layers: int, strict_model_id: bool = False) -> None:
        """Raise :class:`ArtifactMismatchError` naming every mismatch with the model."""
        problems = []
        if self.hidden_size != hidden_size:
            problems.append(f"hidden size {self.hidden_size} != model's {hidden_size}")
        if self.n_layers != n_layers:
            problems.append(f"{self.n_layers} layers != model's {n_layers}")
        if not 0 <= self.monitor_layer < n_layers:
            problems.append(f"monitor layer {self.monitor_layer} outside 0..{n_layers - 1}")
        if strict_model_id and model_id and self.model_id != model_id:
            problems.append(f"model id {self.model_id!r} != {model_id!r}")
        if problems:
            where = f" ({self.path})" if self.path else ""
            raise ArtifactMismatchError(f"axis for {self.model_id}{where} does not fit this model: " + "; ".join(problems))


def _fingerprint_in(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _read_json(path: Path, kind: str) -> dict:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{kind} metadata not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{kind} metadata {path} is corrupted: {e}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{kind} metadata {path} must be a JSON object")
    version = meta.get("format_version")
    required = {"axis": ("model_id", "monitor_layer", "n_layers", "hidden_size"), "capping": ("id", "layers", "taus")}[kind]
    readable = (FORMAT_VERSION, CAPPING_TIERS_VERSION) if kind == "capping" else (FORMAT_VERSION,)
    if version not in readable:
        raise ArtifactError(f"{path}: format_version {version!r} is not supported (this axiswatch reads "
                            f"{', '.join(map(str, readable))})")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return meta


def _read_tensors(path: Path, kind: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{kind} tensors not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{kind} tensors {path} are corrupted: {e}") from None


def load_axis(folder: str | Path, roles: bool = True) -> AxisArtifact:
    folder = Path(folder)
    if folder.is_file() and folder.name == AXIS_JSON:
        folder = folder.parent
    meta = read_axis_meta(folder)
    axis = _read_tensors(folder / AXIS_FILE, "axis").get("axis")
    if axis is None or axis.dim() != 2:
        raise ArtifactError(f"{folder / AXIS_FILE} must hold a 2-d tensor named 'axis'")
    if list(axis.shape) != [meta.get("n_layers"), meta.get("hidden_size")]:
        raise ArtifactError(f"{folder}: axis shape {list(axis.shape)} disagrees with axis.json "
                            f"n_layers={meta.get('n_layers')} hidden_size={meta.get('hidden_size')}")
    if not torch.isfinite(axis).all():
        raise ArtifactError(f"{folder / AXIS_FILE} holds non-finite values")
    if bool((axis.float().norm(dim=-1) == 0).any()):
        raise ArtifactError(f"{folder / AXIS_FILE} has an all-zero layer; the axis cannot be normalised there")
    default = None
    if (folder / DEFAULT_FILE).exists():
        default = _read_tensors(folder / DEFAULT_FILE, "default vector").get("default")
        if default is None or default.shape != axis.shape:
            raise ArtifactError(f"{folder / DEFAULT_FILE} must hold a tensor 'default' shaped like the axis")
    role_vectors = _read_tensors(folder / ROLES_FILE, "role vectors") if roles and (folder / ROLES_FILE).exists() else {}
    try:
        monitor_layer = int(meta["monitor_layer"])
    except (TypeError, ValueError):
        raise ArtifactError(f"{folder / AXIS_JSON}: monitor_layer must be an integer") from None
    return AxisArtifact(axis=axis.float(), model_id=str(meta["model_id"]), monitor_layer=monitor_layer,
                        calibration=meta.get("calibration", {}), provenance=meta.get("provenance", {}),
                        default_vector=default, role_vectors={k: v.float() for k, v in role_vectors.items()}, path=folder)


def read_axis_meta(folder: str | Path) -> dict:
    """An axis folder's ``axis.json``, checked for its format version and required keys."""
    return _read_json(Path(folder) / AXIS_JSON, "axis")


TOKENS = ("all", "generated")  # which positions a capping config floors


@dataclass
class CappingConfig:
    """Floors on the +axis: at each layer ``h <- h + max(tau - <h, v>, 0) v`` with unit ``v``.

    Conditional (two-tier) capping: ``light_taus`` (one per layer, None where the light tier sets no
    floor) floor every session under policy ``cap`` from its first token; ``taus`` (the strong tier) take
    over when the detector flags the session. Without ``light_taus`` a session is not capped until then.
    ``tokens``: ``all`` positions, or only the ``generated`` ones (each reply's own positions)."""

    id: str
    layers: list[int]
    vectors: torch.Tensor  # [k, hidden], unit, pointing toward the Assistant
    taus: list[float]
    model_id: str = ""
    provenance: dict = field(default_factory=dict)
    path: Path | None = None
    light_taus: list[float | None] | None = None
    tokens: str = "all"

    def __post_init__(self):
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.layers) or len(self.taus) != len(self.layers):
            raise ArtifactError(f"capping config {self.id!r}: need one vector and one tau per layer "
                                f"(layers={len(self.layers)}, vectors={tuple(self.vectors.shape)}, taus={len(self.taus)})")
        if not all(math.isfinite(t) for t in self.taus):
            raise ArtifactError(f"capping config {self.id!r} has non-finite taus")
        if self.light_taus is not None and (len(self.light_taus) != len(self.layers) or not any(
                t is not None for t in self.light_taus) or not all(t is None or math.isfinite(t) for t in self.light_taus)):
            raise ArtifactError(f"capping config {self.id!r}: light_taus needs one finite floor or null per layer, "
                                "at least one of them a floor")
        if self.tokens not in TOKENS:
            raise ArtifactError(f"capping config {self.id!r}: tokens must be one of {', '.join(TOKENS)}, not {self.tokens!r}")
        if bool((self.vectors.float().norm(dim=-1) == 0).any()) or not torch.isfinite(self.vectors).all():
            raise ArtifactError(f"capping config {self.id!r} has a zero or non-finite vector")
        self.vectors = unit(self.vectors)

    @property
    def conditional(self) -> bool:
        """Does the detector change the floors (the light tier, or none, differs from the strong one)? A config
        whose ``light_taus`` equal its ``taus`` caps every session under policy ``cap`` from its first token."""
        return self.light_taus != list(self.taus)

    def light_floors(self) -> list[float] | None:
        """The light tier's floors with ``-inf`` where it sets none (None for a one-tier config)."""
        return None if self.light_taus is None else [float("-inf") if t is None else float(t) for t in self.light_taus]

    def meta(self) -> dict:
        extra: dict = {} if self.light_taus is None else {
            "light_taus": [None if t is None else float(t) for t in self.light_taus]}
        if self.tokens != "all":
            extra["tokens"] = self.tokens
        version = CAPPING_TIERS_VERSION if extra else FORMAT_VERSION
        return {"format_version": version, "kind": "capping", "id": self.id, "model_id": self.model_id,
                "hidden_size": int(self.vectors.shape[1]), "layers": list(map(int, self.layers)),
                "taus": [float(t) for t in self.taus], **extra, "provenance": self.provenance}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.vectors.float().contiguous()}, folder / CAP_FILE)
        (folder / CAP_JSON).write_text(json.dumps(self.meta(), indent=1, sort_keys=True))
        self.path = folder
        return folder

    def check(self, hidden_size: int, n_layers: int) -> None:
        problems = []
        if self.vectors.shape[1] != hidden_size:
            problems.append(f"hidden size {self.vectors.shape[1]} != model's {hidden_size}")
        bad = [L for L in self.layers if not 0 <= L < n_layers]
        if bad:
            problems.append(f"layers {bad} outside 0..{n_layers - 1}")
        if problems:
            raise ArtifactMismatchError(f"capping config {self.id!r} does not fit this model: " + "; ".join(problems))


def load_capping(folder: str | Path) -> CappingConfig:
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    meta = _read_json(folder / CAP_JSON, "capping")
    vectors = _read_tensors(folder / CAP_FILE, "capping").get("vectors")
    if vectors is None:
        raise ArtifactError(f"{folder / CAP_FILE} must hold a tensor named 'vectors'")
    try:
        layers, taus = [int(x) for x in meta["layers"]], [float(t) for t in meta["taus"]]
        light = meta.get("light_taus")
        light = None if light is None else [None if t is None else float(t) for t in light]
    except (TypeError, ValueError):
        raise ArtifactError(f"{folder / CAP_JSON}: layers, taus and light_taus must be lists of numbers") from None
    return CappingConfig(id=str(meta["id"]), layers=layers, vectors=vectors, taus=taus,
                         model_id=meta.get("model_id", ""), provenance=meta.get("provenance", {}), path=folder,
                         light_taus=light, tokens=str(meta.get("tokens", "all")))


# --- the paper's published files -------------------------------------------------------

def _torch_load(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError for anything but plain tensors/containers
        raise ArtifactError(f"{path} is not a tensor file loadable with weights_only=True: {e}") from None


# the target layers the paper monitors for its published models (its Table of target layers)
PAPER_MONITOR_LAYERS = {"google/gemma-2-27b-it": 22, "Qwen/Qwen3-32B": 32, "meta-llama/Llama-3.3-70B-Instruct": 40}


def import_paper_axis(path: str | Path, model_id: str, monitor_layer: int | None = None) -> AxisArtifact:
    """Read ``assistant_axis.pt`` (a dict with key ``axis`` or a bare ``[n_layers, hidden]`` tensor).

    The monitor layer defaults to the paper's target layer for its three models,
    else the middle layer."""
    obj = _torch_load(Path(path))
    axis = obj.get("axis") if isinstance(obj, dict) else obj
    if not isinstance(axis, torch.Tensor) or axis.dim() != 2:
        raise ArtifactError(f"{path}: expected a [n_layers, hidden] tensor or a dict with key 'axis'")
    if monitor_layer is None:
        monitor_layer = PAPER_MONITOR_LAYERS.get(model_id, axis.shape[0] // 2)
    if not 0 <= monitor_layer < axis.shape[0]:
        raise ArtifactError(f"monitor layer {monitor_layer} outside 0..{axis.shape[0] - 1}")
    if bool((axis.float().norm(dim=-1) == 0).any()) or not torch.isfinite(axis).all():
        raise ArtifactError(f"{path}: the axis has an all-zero or non-finite layer")
    layer = monitor_layer
    return AxisArtifact(axis=axis.float(), model_id=model_id, monitor_layer=layer,
                        provenance={"source": "paper", "file": str(path)})


def import_paper_capping(path: str | Path, experiment_id: str | None = None, model_id: str = "") -> CappingConfig:
    """Read ``capping_config.pt`` and convert it to floors on the +axis.

    The published vectors point away from the Assistant (role minus default)
    and carry upper caps ``c``: ``h <- h - max(<h, u> - c, 0) u`` with unit
    ``u``. With ``v = -u`` and ``tau = -c`` that is exactly our floor.
    """
    obj = _torch_load(Path(path))
    try:
        vectors, experiments = obj["vectors"], obj["experiments"]
        exp = experiments[0] if experiment_id is None else next(e for e in experiments if str(e["id"]) == str(experiment_id))
        layers, vecs, taus = [], [], []
        for iv in exp["interventions"]:
            spec = vectors[iv["vector"]]
            layers.append(int(spec["layer"]))
            raw = torch.as_tensor(spec["vector"]).float().flatten()
            if float(raw.norm()) == 0 or not torch.isfinite(raw).all():
                raise ArtifactError(f"{path}: vector {iv['vector']!r} is zero or non-finite")
            vecs.append(-unit(raw))
            taus.append(-float(iv["cap"]))
    except StopIteration:
        ids = [str(e.get("id")) for e in obj.get("experiments", [])]
        raise ArtifactError(f"{path}: no experiment {experiment_id!r}; available: {', '.join(ids[:20])}") from None
    except (KeyError, TypeError, IndexError) as e:
        raise ArtifactError(f"{path}: not a capping config in the published layout ({e!r} missing)") from None
    if not layers:
        raise ArtifactError(f"{path}: experiment has no interventions")
    return CappingConfig(id=f"paper:{exp['id']}", layers=layers, vectors=torch.stack(vecs), taus=taus,
                         model_id=model_id, provenance={"source": "paper", "file": str(path), "experiment": str(exp["id"])})
