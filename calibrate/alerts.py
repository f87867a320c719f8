"""``axiswatch calibrate-alerts``: generate the benign calibration conversations, fit the thresholds,
store them in the axis folder.

The conversations (``calibrate/data/alert_calibration.json``: 120 everyday requests, each
with two follow-ups a user would type next, a sixth of them changing format or genre)
are run with two of the default system prompts (none, and "You are an AI assistant."),
so the model answers as its ordinary Assistant. :func:`calibrate.thresholds.fit_thresholds`
turns their drift statistics into thresholds, which land in ``axis.json`` under
``calibration["alerting"]`` with the settings they hold for. ``compute-axis`` runs this as
its last step; on its own it recalibrates an existing axis (resumable: every generation
round is checkpointed in ``--work``).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from calibrate.conversations import run_conversations
from calibrate.roles import DEFAULT_PROMPTS, load_json
from calibrate.thresholds import fit_level_thresholds, fit_thresholds
from monitor.drift import DriftConfig
from probes.artifacts import AXIS_JSON, AxisArtifact, read_axis_meta
from probes.models import LoadedModel

SYSTEM_PROMPTS = (DEFAULT_PROMPTS[0], DEFAULT_PROMPTS[1])  # the template's own default, "You are an AI assistant."
QUICK = {"conversations": 12, "max_new_tokens": 32}


def axis_gap(art: AxisArtifact) -> float | None:
    """Default answers' mean projection minus the median in-role (score 3) answer's, at the monitor layer."""
    st = art.layer_stats()
    d = st.get("default_mean")
    r = (st.get("roles_score3") or {}).get("p50", (st.get("roles") or {}).get("p50"))
    return float(d - r) if isinstance(d, (int, float)) and isinstance(r, (int, float)) and d > r else None


def in_role_median(art: AxisArtifact) -> float | None:
    """The median projection of in-role (score 3) answers at the monitor layer."""
    r = (art.layer_stats().get("roles_score3") or {}).get("p50")
    return float(r) if isinstance(r, (int, float)) else None


def calibration_conversations(limit: int | None = None) -> list[dict]:
    doc = load_json("alert_calibration.json")
    convs = doc["conversations"][:limit]
    return [{"id": f"{c['id']}:p{p}", "system": system, "turns": c["turns"], "category": c.get("category")}
            for p, system in enumerate(SYSTEM_PROMPTS) for c in convs]


def write_alert_calibration(folder: str | Path, alerting: dict) -> Path:
    """Store the alert calibration in an axis folder's ``axis.json``, under ``calibration["alerting"]``; the
    tensors and everything else in the file stay as they are (written to a temporary file, then moved)."""
    path = Path(folder) / AXIS_JSON
    meta = read_axis_meta(folder)
    meta.setdefault("calibration", {})["alerting"] = alerting
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def calibrate_alerts(lm: LoadedModel, art: AxisArtifact, work: Path, config: DriftConfig, quick: bool = False,
                     max_new_tokens: int = 96, batch_size: int = 32, out: Path | None = None) -> dict:
    """Generate (or resume), fit, and write ``calibration["alerting"]`` into ``out`` (default: the axis folder)."""
    convs = calibration_conversations(QUICK["conversations"] if quick else None)
    max_new_tokens = QUICK["max_new_tokens"] if quick else max_new_tokens
    total = sum(len(c["turns"]) for c in convs)
    with tqdm(total=total, unit="reply", desc="alert calibration", mininterval=2) as bar:
        replies = run_conversations(lm, convs, art.unit(), art.monitor_layer, work, max_new_tokens, batch_size,
                                    on_batch=bar.update, axis_id=art.fingerprint())
    turns = [[r["scores"] for r in rs] for rs in replies]
    gap = axis_gap(art) if config.baseline == "session" else None  # a gap below a reference: drift units only
    thresholds, stats = fit_thresholds(turns, config, gap)
    level = None
    if config.baseline == "session":  # the absolute level beside the drift, on the same conversations
        lth, lstats = fit_level_thresholds(turns, config.level_alpha, config.min_tokens, in_role_median(art))
        level = {"thresholds": lth.as_dict(), **lstats}
    alerting = {"thresholds": thresholds.as_dict(), "alpha": config.alpha, **({"level": level} if level else {}),
                "baseline": config.baseline, "reference_tokens": config.reference_tokens,
                "min_tokens": config.min_tokens, "statistic": "running score minus the session's opening reference",
                "data": "calibrate/data/alert_calibration.json", "system_prompts": list(SYSTEM_PROMPTS),
                "max_new_tokens": max_new_tokens, "quick": quick, **stats}
    write_alert_calibration(out or Path(str(art.path)), alerting)
    art.calibration["alerting"] = alerting
    return alerting
