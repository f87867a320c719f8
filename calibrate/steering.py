"""The steering check: how often answers to identity questions claim a
non-assistant identity when the monitor layer is steered along the axis.

Coefficients are in units of the monitor layer's mean residual norm; positive
pushes toward the Assistant, negative away from it.
"""

from __future__ import annotations

from calibrate.judge import claims_non_assistant
from calibrate.rollouts import batched_generate
from probes.artifacts import AxisArtifact
from probes.errors import ArtifactError
from probes.generation import GenerationOptions, SteerPlan
from probes.models import LoadedModel
from probes.ops import steer_coefficient

DEFAULT_COEFFS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)


def evaluate_steering(lm: LoadedModel, art: AxisArtifact, questions: list[str],
                      coeffs: tuple[float, ...] = DEFAULT_COEFFS, batch_size: int = 48,
                      max_new_tokens: int = 48) -> dict:
    norm = art.mean_norm()
    if norm is None:
        raise ArtifactError("the axis records no mean residual norm at its monitor layer; cannot scale coefficients")
    msgs = [[{"role": "user", "content": q}] for q in questions]
    opts = GenerationOptions(max_new_tokens=max_new_tokens)
    rows = []
    for c in coeffs:
        plan = SteerPlan(art.monitor_layer, art.unit(), steer_coefficient(c, norm)) if c else None
        outs = batched_generate(lm, msgs, opts, batch_size, steering=plan)
        claims = [claims_non_assistant(o.text) for o in outs]
        rows.append({"coeff": c, "absolute": steer_coefficient(c, norm), "non_assistant_rate": sum(claims) / len(claims),
                     "answers": [{"question": q, "text": o.text, "non_assistant": k}
                                 for q, o, k in zip(questions, outs, claims)]})
    return {"layer": art.monitor_layer, "mean_norm": norm, "n_questions": len(questions), "rows": rows,
            "detector": "lexical: no AI self-reference and a claim to be someone/something else or a human life"}
