"""axiswatch's model side: load chat models, find their layers, hook them, and
compute, score and cap the Assistant Axis. No Redis, SQL or HTTP in here."""

from probes.artifacts import AxisArtifact, CappingConfig, import_paper_axis, import_paper_capping, load_axis, load_capping
from probes.audit import score_conversation
from probes.errors import (
    ArtifactError,
    ArtifactMismatchError,
    AxiswatchError,
    InputError,
    JudgeError,
    LayerNotFoundError,
    ModelLoadError,
)
from probes.generation import CapPlan, Generated, GenerationOptions, SteerPlan, generate
from probes.hooks import layer_hooks
from probes.layers import find_layers
from probes.models import LoadedModel, format_chat, load_model
from probes.ops import cap, project, steer, unit

__all__ = [
    "ArtifactError", "ArtifactMismatchError", "AxisArtifact", "AxiswatchError", "CapPlan", "CappingConfig",
    "Generated", "GenerationOptions", "InputError", "JudgeError", "LayerNotFoundError", "LoadedModel",
    "ModelLoadError", "SteerPlan", "cap", "find_layers", "format_chat", "generate", "import_paper_axis",
    "import_paper_capping", "layer_hooks", "load_axis", "load_capping", "load_model", "project",
    "score_conversation", "steer", "unit",
]
