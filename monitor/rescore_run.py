"""What-if re-scoring of stored sessions: each one's conversation read back through the model by teacher
forcing (:func:`probes.audit.score_conversation`, the audit's scoring) with another axis, its new scores
replayed through a fresh drift tracker (policy ``flag``: alerts on) with that axis' thresholds or others,
and the alerts it raises compared with the ones the session recorded (:mod:`monitor.rescore`).

Under policy ``observe`` and ``flag`` the axis never changes what the model generates, only how its tokens
are scored, so teacher forcing gives what ``serve`` would have scored with the other axis: the scores are
the monitor layer's projections at the positions that produced each token, the positions the
generation's own forward pass scored. Under policy ``cap`` the text is the capped generation's; teacher
forcing with no floor scores it as the uncapped model reads it (what the drift tracker follows, the pre-cap
score), and the capping another axis would have switched on, which would have changed the text, is not
simulated. Nothing is written: the store is opened read-only (:mod:`monitor.rescore_store`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from monitor.drift import DriftTracker
from monitor.errors import AxiswatchError
from monitor.rescore import SessionRescore, session_outcome
from monitor.rescore_store import segments, skip_reason
from monitor.store import Store
from probes.artifacts import AxisArtifact
from probes.audit import score_conversation
from probes.models import LoadedModel


def _skipped(stored: dict[str, Any], why: str) -> SessionRescore:
    return SessionRescore(str(stored["id"]), str(stored.get("source") or "live"), stored.get("policy"),
                          str(stored.get("model_id") or ""), stored.get("created_at"),
                          str(stored.get("peak_state") or "ok"), skipped=why)


@dataclass
class Rescorer:
    """The model, the axis to score with, and a factory of fresh trackers (the detectors and thresholds
    to replay with; policy ``flag``)."""

    lm: LoadedModel
    art: AxisArtifact
    tracker: Callable[[], DriftTracker]
    unit: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.unit = self.art.unit()  # [hidden]: the monitor layer's unit axis

    def scores(self, stored: dict[str, Any]) -> tuple[dict[int, list[float]], list[str]]:
        """Stored turn number -> the new scores of that reply, and notes on the rebuild."""
        segs, notes = segments(stored)
        out: dict[int, list[float]] = {}
        for seg in segs:
            for ts in score_conversation(self.lm, seg.messages, self.unit, self.art.monitor_layer):
                if ts.index in seg.replies:
                    out[seg.replies[ts.index]] = ts.scores
        return out, notes

    def session(self, stored: dict[str, Any]) -> SessionRescore:
        """One stored session (``Store.get_session``) rescored, or skipped with the reason."""
        why = skip_reason(stored, self.lm.model_id)
        if why is not None:
            return _skipped(stored, why)
        try:
            scores, notes = self.scores(stored)
        except AxiswatchError as e:  # a conversation longer than the model takes, a template that alters text
            return _skipped(stored, f"cannot be teacher-forced: {e}")
        stored_n = {int(t["turn"]): len(t.get("scores") or []) for t in stored["turns"]}
        split = sum(len(s) != stored_n.get(n, 0) for n, s in scores.items())
        if split:
            notes.append(f"{split} of {len(scores)} replies read back as another number of tokens than stored "
                         "(the text tokenises differently from how it was generated)")
        if stored.get("policy") == "observe":
            notes.append("recorded under policy observe: it recorded no alerts, so every alert of the replay is added")
        return session_outcome(stored, scores, self.tracker(), notes)


def rescore(store: Store, ids: Sequence[str], rescorer: Rescorer,
            on_session: Callable[[SessionRescore], None] | None = None) -> Iterator[SessionRescore]:
    """Each of ``ids`` read from ``store`` and rescored, in order (``on_session`` after each: a progress bar)."""
    for sid in ids:
        stored = store.get_session(sid)
        result = _skipped({"id": sid}, "not in the store any more") if stored is None else rescorer.session(stored)
        if on_session is not None:
            on_session(result)
        yield result
