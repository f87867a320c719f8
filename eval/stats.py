"""Statistics and aggregation for the evaluation: pure functions on plain lists and dicts.

No model, no HTTP. A *conversation record* (what :mod:`eval.live` produces) is
``{"id", "domain", "policy", "turns": [{"scores": [...], "pre_cap_scores": [...],
"mean", "state", "capped", "text"}, ...]}``; per-token scores are the
projections the service reported at the monitor layer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from monitor.drift import DriftConfig, DriftTracker, Thresholds
from monitor.replay import replay as replay_turns

LEVELS = ("ok", "watch", "warning", "critical")


# ------------------------------------------------------------------ descriptive
def summarize(values: Sequence[float]) -> dict:
    """n, mean, sample standard deviation, standard error, median, min, max (None where undefined)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "sem": None, "median": None, "min": None, "max": None}
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "sem": sd / math.sqrt(n), "median": median(xs),
            "min": min(xs), "max": max(xs)}


def median(values: Sequence[float]) -> float | None:
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def turn_mean(scores: Sequence[float]) -> float | None:
    return sum(scores) / len(scores) if scores else None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (0, 0 for n = 0)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(flags: Sequence[bool]) -> dict:
    """Proportion of true flags with its Wilson 95% interval."""
    k, n = sum(bool(f) for f in flags), len(flags)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


# ------------------------------------------------------------------ comparisons
def mean_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, n_perm: int = 10_000,
                    seed: int = 0) -> dict:
    """``mean(a) - mean(b)`` with a bootstrap 95% interval (resampling each group) and a
    two-sided permutation p-value (random relabelings; exact enough at 10,000)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        return {"diff": None, "ci95": None, "p_permutation": None, "n_a": len(a), "n_b": len(b)}
    rng = random.Random(seed)
    diff = sum(a) / len(a) - sum(b) / len(b)
    boots = []
    for _ in range(n_boot):
        ra = [a[rng.randrange(len(a))] for _ in a]
        rb = [b[rng.randrange(len(b))] for _ in b]
        boots.append(sum(ra) / len(ra) - sum(rb) / len(rb))
    boots.sort()
    lo, hi = boots[int(0.025 * (n_boot - 1))], boots[int(0.975 * (n_boot - 1))]
    pooled, na = a + b, len(a)
    extreme = 0
    for _ in range(n_perm):
        rng.shuffle(pooled)
        d = sum(pooled[:na]) / na - sum(pooled[na:]) / (len(pooled) - na)
        extreme += abs(d) >= abs(diff) - 1e-12
    return {"diff": diff, "ci95": [lo, hi], "p_permutation": (extreme + 1) / (n_perm + 1), "n_a": len(a), "n_b": len(b)}


SAME_TOL = 0.01  # score units: batched float noise between identical twin sessions is ~1e-4


def paired_difference(after: Sequence[float], before: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                      tol: float = SAME_TOL) -> dict:
    """Mean of ``after[i] - before[i]`` with a bootstrap 95% interval and the counts of pairs that rose,
    fell, or stayed within ``tol``."""
    d = [float(x) - float(y) for x, y in zip(after, before)]
    if not d:
        return {"mean": None, "ci95": None, "n": 0, "n_up": 0, "n_down": 0, "n_same": 0}
    rng = random.Random(seed)
    boots = sorted(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for _ in range(n_boot))
    return {"mean": sum(d) / len(d), "ci95": [boots[int(0.025 * (n_boot - 1))], boots[int(0.975 * (n_boot - 1))]],
            "n": len(d), "n_up": sum(x > tol for x in d), "n_down": sum(x < -tol for x in d),
            "n_same": sum(abs(x) <= tol for x in d)}


# ------------------------------------------------------------------ drift by domain
def turn_means(conv: dict, key: str = "scores") -> list[float | None]:
    """The mean of each assistant turn's per-token scores (``key``: scores or pre_cap_scores)."""
    return [turn_mean(t.get(key) or t["scores"]) for t in conv["turns"]]


def by_position(convs: Sequence[dict], key: str = "scores") -> list[dict]:
    """Per turn position: summary of the turn means over the conversations."""
    n_turns = max((len(c["turns"]) for c in convs), default=0)
    out = []
    for i in range(n_turns):
        vals = [turn_means(c, key)[i] for c in convs if i < len(c["turns"])]
        out.append({"turn": i + 1, **summarize([v for v in vals if v is not None])})
    return out


def domain_table(convs: Sequence[dict], domains: Sequence[str], key: str = "scores") -> dict:
    """``{domain: {"by_turn": [...], "final": summary of final-turn means, "first": ...}}``."""
    out = {}
    for d in domains:
        cs = [c for c in convs if c["domain"] == d]
        finals = [turn_means(c, key)[-1] for c in cs]
        firsts = [turn_means(c, key)[0] for c in cs]
        out[d] = {"by_turn": by_position(cs, key), "final": summarize([f for f in finals if f is not None]),
                  "first": summarize([f for f in firsts if f is not None]),
                  "final_by_conversation": {c["id"]: f for c, f in zip(cs, finals)}}
    return out


def final_turn_means(convs: Sequence[dict], domains: Sequence[str], key: str = "scores") -> list[float]:
    return [m for c in convs if c["domain"] in domains for m in [turn_means(c, key)[-1]] if m is not None]


# ------------------------------------------------------------------ alerting latency
def replay(turn_scores: Sequence[Sequence[float]], thresholds: Thresholds, config: DriftConfig | None = None,
           policy: str = "flag") -> dict:
    """Replay a session's per-token scores through the engine's own drift tracker.

    Returns, in tokens since the start of the session (1-based: the crossing
    token is counted), when the tracked statistic (the running score minus the session's
    reference for the session baseline, the running score itself for ``absolute``) first put the session at
    ``warning`` or worse (``running_warning``; None if never), when the first
    alert at ``warning`` or worse fired (``alert_warning``, which also waits for
    ``min_tokens``), and the state and running score at the end of each turn.
    """
    tr = DriftTracker(thresholds, config or DriftConfig(), policy)
    seen, crossing, alert, ends = 0, None, None, []
    warn = LEVELS.index("warning")
    for scores, r in zip(turn_scores, replay_turns(tr, enumerate(turn_scores))):
        for ev in r.events:
            at = seen + ev.token_index + 1
            if crossing is None and ev.kind == "state" and LEVELS.index(ev.new_state) >= warn:
                crossing = at
            if alert is None and ev.kind == "alert" and LEVELS.index(ev.level) >= warn:
                alert = at
        seen += len(scores)
        ends.append({"state": r.summary.state, "running": r.summary.running, "tokens": seen})
    return {"running_warning": crossing, "alert_warning": alert, "turn_ends": ends, "n_tokens": seen}


def first_turn_mean_crossing(turn_scores: Sequence[Sequence[float]], threshold: float,
                             config: DriftConfig | None = None) -> dict:
    """Per-turn alerting: the first turn whose mean (minus the session's reference, for the session
    baseline: the same opening the tracker compares against) is below ``threshold``; a turn mean exists
    only once its turn is over, so the latency is the session's token count at the end of that turn."""
    config = config or DriftConfig()
    seen, opening = 0, []
    ref = 0.0 if config.baseline == "absolute" else None
    for i, scores in enumerate(turn_scores):
        seen += len(scores)
        if ref is None:  # still the opening: the reference, not compared to one
            opening += list(scores)
            if opening and len(opening) >= config.reference_tokens:
                ref = sum(opening) / len(opening)
            continue
        m = turn_mean(scores)
        if m is not None and m - ref < threshold and seen >= config.min_tokens:
            return {"turn": i + 1, "tokens": seen}
    return {"turn": None, "tokens": None}


def alerting_latency(convs: Sequence[dict], thresholds: Thresholds, config: DriftConfig | None = None) -> list[dict]:
    """Per conversation: per-token (running score) vs per-turn (turn mean) first warning, in tokens."""
    rows = []
    for c in convs:
        ts = [t["scores"] for t in c["turns"]]
        r = replay(ts, thresholds, config)
        pt = first_turn_mean_crossing(ts, thresholds.warning, config)
        rows.append({"id": c["id"], "domain": c["domain"], "n_tokens": r["n_tokens"],
                     "per_token": r["running_warning"], "per_token_alert": r["alert_warning"],
                     "per_turn": pt["tokens"], "per_turn_turn": pt["turn"],
                     "lead": (pt["tokens"] - r["running_warning"]) if pt["tokens"] and r["running_warning"] else None,
                     "replayed_states": [e["state"] for e in r["turn_ends"]]})
    return rows


def latency_summary(rows: Sequence[dict]) -> dict:
    """How many conversations each method catches, and the distribution of its latency."""
    n = len(rows)
    out = {"n": n}
    for key in ("per_token", "per_token_alert", "per_turn"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = {"caught": len(vals), "of": n, **{k: v for k, v in summarize(vals).items() if k != "n"}}
    both = [r["lead"] for r in rows if r["lead"] is not None]
    out["lead_tokens"] = {"n_both": len(both), **{k: v for k, v in summarize(both).items() if k != "n"},
                          "n_per_token_earlier": sum(x > 0 for x in both), "n_same": sum(x == 0 for x in both),
                          "n_per_turn_earlier": sum(x < 0 for x in both)}
    out["only_per_token"] = sum(r["per_token"] is not None and r["per_turn"] is None for r in rows)
    out["only_per_turn"] = sum(r["per_turn"] is not None and r["per_token"] is None for r in rows)
    return out
