"""An audited conversation's verdict: the one serialisation ``axiswatch audit --json`` prints and
``POST /v1/audit`` answers. Pure: no I/O.

``{"id", "model", "layer", "turns": [{"index", "role", "mean", "scores", "tokens", "state"}], "state",
"running", "drift", "detector", "statistics", "alerts": [{"turn", "token_index", "level", "detector", "score",
"threshold", "excerpt"}]}``: the assistant turns (content tokens only; ``index`` is the message index), each
turn's drift state at its end, and the conversation's final state, running score, drift, the detector that
holds the state and every detector's statistic, and the alerts raised (with the detector that fired): its scores
replayed (:func:`monitor.replay.replay`) through a drift tracker with the deployment's thresholds, drift
settings and policy, from the conversation's first message on. Without a tracker (no thresholds to
apply) the state keys are left out.
"""

from __future__ import annotations

from typing import Any

from monitor.drift import DriftTracker
from monitor.replay import replay


def verdict(rid: str, model: str, layer: int, turns: list[dict[str, Any]], tracker: DriftTracker | None) -> dict:
    """The verdict of one conversation: ``turns`` are its scored assistant turns
    (:meth:`probes.audit.TurnScores.as_dict`), ``tracker`` a fresh one (None: no states)."""
    out: dict[str, Any] = {"id": rid, "model": model, "layer": layer, "turns": [dict(t) for t in turns]}
    if tracker is None:
        return out
    alerts = []
    for t, r in zip(out["turns"], replay(tracker, [(t["index"], t["scores"]) for t in out["turns"]])):
        alerts += [{"turn": t["index"], "token_index": ev.token_index, "level": ev.level, "detector": ev.detector,
                    "score": ev.running, "threshold": ev.threshold, "excerpt": "".join(t["tokens"][:ev.token_index + 1])[-200:]}
                   for ev in r.events if ev.kind == "alert"]
        t["state"] = r.summary.state
    out.update(state=tracker.state, running=tracker.running, drift=tracker.drift, detector=tracker.detector,
               statistics=tracker.statistics, alerts=alerts)
    return out
