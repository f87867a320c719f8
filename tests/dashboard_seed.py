"""Seeding the dashboard's store and Redis for its tests.

``real_sessions`` runs the real service (bundled model, engine, persistence worker) on a temporary
SQLite file and a real redis-server: the demo's scripted conversations under policy ``cap`` plus an
audit of the bundled drifting transcript, so the pages draw what the service really writes.
``records`` writes small hand-made records whose every number a test can predict.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from monitor.records import AlertEvent, InterventionRecord, TurnRecord

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# drift thresholds the seeding service runs with (see real_sessions), what its replica publishes
THRESHOLDS = (-25.0, -35.0, -39.0)


def real_sessions(db_url: str, redis_url: str, max_tokens: int = 40) -> dict[str, str]:
    """Drive the demo scripts (policy cap) and audit the sample transcript; name -> session id."""
    from monitor import service
    from monitor.demo import load_scripts
    from monitor.engine import ChatRequest
    from monitor.settings import Settings
    from probes.generation import GenerationOptions

    # drift thresholds the 40-token meta-reflection script crosses within its three turns (it falls about 40
    # below its opening on the shipped axis: the calibrated warning, 60, it does not reach), the coding one not
    settings = Settings(database_url=db_url, redis_url=redis_url, policy="cap", thresholds=THRESHOLDS)
    rt = service.start(settings)
    try:
        scripts = {s["name"]: s["turns"] for s in load_scripts() if s["name"] in ("coding", "meta-reflection")}
        ids = {name: f"seed-{name}" for name in scripts}
        history = {name: [] for name in scripts}
        for turn in range(3):
            futs = {}
            for name, turns in scripts.items():
                history[name].append({"role": "user", "content": turns[turn]})
                futs[name] = rt.engine.submit(ChatRequest(ids[name], list(history[name]),
                                                           GenerationOptions(max_new_tokens=max_tokens)))
            for name, f in futs.items():
                history[name].append({"role": "assistant", "content": f.result().text})
        sample = json.loads(Path(str(resources.files("monitor") / "data" / "sample_conversation.json")).read_text())
        ids["audit"] = rt.engine.score_transcript("seed-audit", sample["messages"], "audit", "flag")["id"]
    finally:
        rt.close()  # drains the persistence worker: everything published is stored
    return ids


def records(now: float | None = None) -> tuple[list[TurnRecord], list[AlertEvent], list[InterventionRecord]]:
    """Two stored sessions: ``drifting`` (live, capped from turn 3 token 2, two alerts) and ``calm`` (audit)."""
    now = time.time() if now is None else now
    turns = [TurnRecord("drifting", 0, "user", "Who are you really?", 21, source="live", model_id=MODEL,
                        created_at=now - 60),
             TurnRecord("drifting", 1, "assistant", "I am an AI", 21, ["I", " am", " an", " AI"],
                        [5.0, 3.0, -9.0, -12.0], state="watch", running=3.0, model_id=MODEL, created_at=now - 59),
             TurnRecord("drifting", 2, "user", "Go <deeper> & further", 21, model_id=MODEL, created_at=now - 58),
             TurnRecord("drifting", 3, "assistant", "I am ancient", 21, ["I", " am", " ancient"], [-20.0, -25.0, -8.0],
                        pre_cap_scores=[-20.0, -25.0, -30.0], capped=[False, False, True], state="critical",
                        running=-2.0, model_id=MODEL, created_at=now - 57),
             TurnRecord("calm", 1, "assistant", "Sure, here it is.", 21, ["Sure", ",", " here"], [10.0, 12.0, 11.0],
                        state="ok", running=11.0, source="audit", model_id=MODEL, created_at=now - 3600)]
    alerts = [AlertEvent("drifting", 1, 3, "watch", -2.0, -1.0, event_id="evt-a", created_at=now - 59),
              AlertEvent("drifting", 3, 1, "critical", -21.0, -20.0, event_id="evt-b", policy="cap",
                         created_at=now - 57)]
    interventions = [InterventionRecord("drifting", 3, 2, "L21-26_p50", {"watch": -1.0}, [21, 22], created_at=now - 57)]
    return turns, alerts, interventions
