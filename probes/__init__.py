"""axiswatch's model side: load chat models, find their layers, hook them, and
compute, score and cap the Assistant Axis. No Redis, SQL or HTTP in here.

Names are imported lazily, so ``probes.errors`` (the exception tree, with no imports of its
own) can be imported without loading torch.
"""

from importlib import import_module

_EXPORTS = {
    "ArtifactError": "errors", "ArtifactMismatchError": "errors", "AxiswatchError": "errors", "InputError": "errors",
    "JudgeError": "errors", "LayerNotFoundError": "errors", "ModelLoadError": "errors",
    "AxisArtifact": "artifacts", "CappingConfig": "artifacts", "import_paper_axis": "artifacts",
    "import_paper_capping": "artifacts", "load_axis": "artifacts", "load_capping": "artifacts",
    "score_conversation": "audit",
    "CapPlan": "generation", "Generated": "generation", "GenerationOptions": "generation", "SteerPlan": "generation",
    "generate": "generation",
    "layer_hooks": "hooks", "find_layers": "layers",
    "LoadedModel": "models", "format_chat": "models", "load_model": "models",
    "cap": "ops", "project": "ops", "steer": "ops", "unit": "ops",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"probes.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
