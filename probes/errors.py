"""The axiswatch exception tree, re-exported for the model side (it lives in :mod:`monitor.errors`)."""

from monitor.errors import (ArtifactError, ArtifactMismatchError, AxiswatchError, InputError, JudgeError,
                            LayerNotFoundError, ModelLoadError)

__all__ = ["ArtifactError", "ArtifactMismatchError", "AxiswatchError", "InputError", "JudgeError",
           "LayerNotFoundError", "ModelLoadError"]
