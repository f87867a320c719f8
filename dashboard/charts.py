"""What the dashboard draws: the trajectory chart (Altair) and the token heatmap (HTML).

Pure functions of :mod:`dashboard.data` results; no Streamlit, no I/O. Scores are raw
projections on the axis at the monitor layer: higher is more Assistant-like, so the
state bands stack downward from ``ok`` to ``critical``. The bands and the token colours
follow the alerting rule: thresholds apply to the drift (the running score minus the
session's opening reference), so the bands sit at ``reference + threshold`` from the
token where the reference is complete, and the opening's tokens are drawn neutral.
"""

from __future__ import annotations

import html
import itertools

import altair as alt
import pandas as pd

from dashboard.data import SessionView, state_of
from monitor.drift import Thresholds

STATE_COLOURS = {"ok": "#2e7d32", "watch": "#f9a825", "warning": "#ef6c00", "critical": "#c62828"}
LEVEL_SHAPES = {"watch": "triangle-down", "warning": "triangle-down", "critical": "diamond"}


def reference_of(view: SessionView) -> tuple[float | None, int | None]:
    """The session's reference and the first token compared against it (None, None before there is one)."""
    for t in view.tokens:
        if t.get("reference") is not None and t.get("drift") is not None:
            return t["reference"], t["i"]
    return None, None


def domain_of(view: SessionView, th: Thresholds) -> tuple[float, float]:
    vals = [t["score"] for t in view.tokens] + [t["pre_cap"] for t in view.tokens if t["pre_cap"] is not None]
    ref, _ = reference_of(view)
    vals += [th.watch + (ref or 0.0), th.critical + (ref or 0.0)] if ref is not None or not view.tokens else []
    lo, hi = min(vals), max(vals)
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def bands(th: Thresholds, lo: float, hi: float, ref: float = 0.0, x0: float = 0, x1: float = 1) -> pd.DataFrame:
    """One row per state: the score range it covers within [lo, hi] (``ref`` + thresholds), from token x0 to x1."""
    w, a, c = th.watch + ref, th.warning + ref, th.critical + ref
    rows = [("ok", w, max(hi, w)), ("watch", a, w), ("warning", c, a), ("critical", min(lo, c), c)]
    return pd.DataFrame([dict(state=s, y=y0, y2=y1, x=x0, x2=x1) for s, y0, y1 in rows])


def trajectory(view: SessionView, th: Thresholds, height: int = 360, title: str | None = None,
               domain: tuple[float, float] | None = None) -> alt.LayerChart:
    """Per-token score, running score, turn means, state bands, turn boundaries, capping and alerts
    (``domain``: the score axis range, to compare sessions on one scale)."""
    lo, hi = domain or (domain_of(view, th) if view.tokens else (th.critical - 1.0, th.watch + 1.0))
    x_max = max(len(view.tokens) - 1, 1)
    y = alt.Scale(domain=[lo, hi], nice=False, zero=False)
    x = alt.Scale(domain=[0, x_max], nice=False)
    colour = alt.Scale(domain=list(STATE_COLOURS), range=list(STATE_COLOURS.values()))
    ref, x0 = reference_of(view)
    layers = [alt.Chart(bands(th, lo, hi, ref, x0, x_max) if ref is not None else bands(th, lo, lo, 0.0, 0, 0))
              .mark_rect(opacity=0.16 if ref is not None else 0.0).encode(
        x=alt.X("x:Q", scale=x), x2="x2:Q",
        y=alt.Y("y:Q", scale=y, title="score (projection on the axis)"), y2="y2:Q",
        color=alt.Color("state:N", scale=colour, legend=alt.Legend(title="state band", orient="top")),
        tooltip=["state:N", alt.Tooltip("y:Q", title="from", format=".2f"),
                 alt.Tooltip("y2:Q", title="to", format=".2f")])]
    if ref is not None:
        layers.append(alt.Chart(pd.DataFrame([dict(ref=ref, x=x0, x2=x_max)])).mark_rule(
            color="#455a64", strokeDash=[4, 2]).encode(x=alt.X("x:Q", scale=x), x2="x2:Q", y=alt.Y("ref:Q", scale=y),
                                                       tooltip=[alt.Tooltip("ref:Q", title="session reference", format=".2f")]))
    tok = pd.DataFrame(view.tokens or [dict(i=0, turn=0, t=0, token="", score=None, pre_cap=None, capped=False,
                                            running=None, drift=None, reference=None, state="ok")])
    tok["token_text"] = tok["token"].map(lambda s: repr(s)[1:-1] if s else "")
    tips = [alt.Tooltip("i:Q", title="token (session)"), alt.Tooltip("turn:Q"), alt.Tooltip("t:Q", title="token (turn)"),
            alt.Tooltip("token_text:N", title="token"), alt.Tooltip("score:Q", format=".3f"),
            alt.Tooltip("running:Q", format=".3f"), alt.Tooltip("drift:Q", format=".3f"),
            alt.Tooltip("state:N", title="running state")]
    base = alt.Chart(tok).encode(x=alt.X("i:Q", scale=x, title="token (session order)"))
    layers.append(base.mark_line(color="#9e9e9e", strokeWidth=1, opacity=0.7).encode(y=alt.Y("score:Q", scale=y)))
    layers.append(base.mark_circle(size=14, color="#757575").encode(y=alt.Y("score:Q", scale=y), tooltip=tips))
    layers.append(base.mark_line(color="#1565c0", strokeWidth=2.5).encode(y=alt.Y("running:Q", scale=y), tooltip=tips))
    capped = tok[tok["capped"] & tok["pre_cap"].notna()]
    if len(capped):
        layers.append(alt.Chart(capped).mark_point(shape="circle", filled=False, color="#6a1b9a", size=30).encode(
            x=alt.X("i:Q", scale=x), y=alt.Y("pre_cap:Q", scale=y),
            tooltip=[alt.Tooltip("i:Q", title="token"), alt.Tooltip("pre_cap:Q", title="pre-cap score", format=".3f"),
                     alt.Tooltip("score:Q", title="post-cap score", format=".3f")]))
    turns = pd.DataFrame([t for t in view.turns if t["role"] == "assistant" and t["n_tokens"]])
    if len(turns):
        turns["x2"] = turns["end"] - 1
        turns["label"] = turns["turn"].map(lambda n: f"turn {n}")
        turns["top"] = hi
        layers.append(alt.Chart(turns).mark_rule(color="#424242", strokeDash=[2, 3], opacity=0.6).encode(
            x=alt.X("start:Q", scale=x)))
        layers.append(alt.Chart(turns).mark_text(align="left", baseline="top", dx=3, dy=3, color="#424242",
                                                 fontSize=11).encode(x=alt.X("start:Q", scale=x),
                                                                     y=alt.Y("top:Q", scale=y), text="label:N"))
        layers.append(alt.Chart(turns).mark_rule(color="#6a1b9a", strokeWidth=3, opacity=0.8).encode(
            x=alt.X("start:Q", scale=x), x2="x2:Q", y=alt.Y("mean:Q", scale=y),
            tooltip=[alt.Tooltip("turn:Q"), alt.Tooltip("mean:Q", title="turn mean", format=".3f"),
                     alt.Tooltip("n_tokens:Q", title="tokens"), alt.Tooltip("state:N", title="state at end")]))
    if view.interventions:
        iv = pd.DataFrame(view.interventions)
        iv["label"] = "capping on (" + iv["config_id"].astype(str) + ")"
        layers.append(alt.Chart(iv).mark_rule(color="#c62828", strokeWidth=2, strokeDash=[6, 3]).encode(
            x=alt.X("i:Q", scale=x), tooltip=["label:N", "turn:Q", alt.Tooltip("token_index:Q", title="token")]))
    if view.alerts:
        al = pd.DataFrame(view.alerts)
        layers.append(alt.Chart(al).mark_point(filled=True, size=120, stroke="black", strokeWidth=0.8).encode(
            x=alt.X("i:Q", scale=x), y=alt.Y("score:Q", scale=y),
            color=alt.Color("level:N", scale=colour, legend=None),
            shape=alt.Shape("level:N", scale=alt.Scale(domain=list(LEVEL_SHAPES), range=list(LEVEL_SHAPES.values())),
                            legend=alt.Legend(title="alert", orient="top")),
            tooltip=["level:N", alt.Tooltip("score:Q", title="running", format=".3f"),
                     alt.Tooltip("threshold:Q", format=".3f"), "turn:Q", alt.Tooltip("token_index:Q", title="token"),
                     "delivery_status:N"]))
    chart = alt.layer(*layers).properties(height=height)
    return chart.properties(title=title) if title else chart


def turn_means_chart(rows: list[dict], title: str = "assistant turn means") -> alt.Chart:
    """Turn means of one or more sessions (``rows``: n, mean, series)."""
    df = pd.DataFrame(rows)
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("n:O", title="assistant turn"), y=alt.Y("mean:Q", title="turn mean score", scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title=None), tooltip=["series:N", "n:O", alt.Tooltip("mean:Q", format=".3f")],
    ).properties(height=260, title=title)


# ---------------------------------------------------------------- heatmap
_STOPS = ((-0.5, (229, 57, 53)), (0.0, (239, 154, 154)), (0.5, (255, 204, 128)), (1.0, (255, 245, 157)),
          (1.5, (200, 230, 201)), (2.0, (232, 245, 233)))  # position in units of (watch - critical) above critical


NEUTRAL = "#eceff1"  # the session's opening: the reference itself, not compared to anything


def colour(score: float | None, th: Thresholds) -> str:
    """Background colour of a token's drift: deep red far below ``critical``, yellow at ``watch``, pale green
    above; neutral grey where there is no drift yet (the opening the session is compared against)."""
    if score is None:
        return NEUTRAL
    pos = (score - th.critical) / (th.watch - th.critical)
    if pos <= _STOPS[0][0]:
        r, g, b = _STOPS[0][1]
    elif pos >= _STOPS[-1][0]:
        r, g, b = _STOPS[-1][1]
    else:
        for (p0, c0), (p1, c1) in itertools.pairwise(_STOPS):
            if p0 <= pos <= p1:
                f = (pos - p0) / (p1 - p0)
                r, g, b = (round(a + f * (c - a)) for a, c in zip(c0, c1))
                break
    return f"#{r:02x}{g:02x}{b:02x}"


CSS = """<style>
.aw-heatmap {font-family: ui-sans-serif, system-ui, sans-serif; font-size: 15px; line-height: 1.7;}
.aw-turn {border-radius: 8px; padding: 8px 12px; margin: 6px 0;}
.aw-user {background: #f1f3f4; border-left: 4px solid #9e9e9e;}
.aw-assistant {background: #ffffff; border: 1px solid #e0e0e0;}
.aw-system {background: #fffde7; border-left: 4px solid #fbc02d;}
.aw-role {font-size: 12px; color: #616161; margin-bottom: 2px; font-weight: 600;}
.aw-text {white-space: pre-wrap;}
.aw-tok {white-space: pre-wrap; border-radius: 3px; padding: 1px 0; cursor: help;}
.aw-tok.aw-capped {outline: 1.5px dashed #6a1b9a; outline-offset: -1px;}
.aw-legend span {display: inline-block; padding: 0 8px; margin-right: 4px; border-radius: 3px; font-size: 12px;}
</style>"""


def legend(th: Thresholds) -> str:
    items = [("far below critical", th.critical - (th.watch - th.critical) * 0.5), ("critical", th.critical),
             ("warning", th.warning), ("watch", th.watch), ("ok", th.watch + (th.watch - th.critical))]
    spans = "".join(f'<span style="background:{colour(v, th)}">{html.escape(n)} {v:+.1f}</span>' for n, v in items)
    return (f'<div class="aw-legend">token colour = drift (running score minus the session\'s opening): '
            f'<span style="background:{NEUTRAL}">opening (the reference)</span>{spans}'
            '<span class="aw-tok aw-capped">capped</span></div>')


def heatmap(view: SessionView, th: Thresholds) -> str:
    """The conversation as HTML: each assistant token on its score's colour, the exact values on hover."""
    parts = [CSS, '<div class="aw-heatmap">', legend(th)]
    for t in view.turns:
        role = t["role"]
        head = f"{role} · turn {t['turn']}"
        if role != "assistant" or not t["n_tokens"]:
            text = html.escape(t["text"]) if t["text"] else "<i>(no text)</i>"
            parts.append(f'<div class="aw-turn aw-{role}"><div class="aw-role">{html.escape(head)}</div>'
                         f'<div class="aw-text">{text}</div></div>')
            continue
        head += f" · mean {t['mean']:+.2f} · {t['n_tokens']} tokens · state {t['state']}"
        if t.get("generating"):
            head += " · generating (from the live tail)"
        elif t["live"]:
            head += " · from the live tail (not stored yet)"
        spans = []
        for tok in view.tokens[t["start"]:t["end"]]:
            drift = tok.get("drift")
            tip = (f"turn {tok['turn']} token {tok['t']}: score {tok['score']:+.3f}, running {tok['running']:+.3f}, "
                   + ("opening (the session's reference)" if drift is None else
                      f"drift {drift:+.3f} ({state_of(drift, th)} band)"))
            if tok["capped"]:
                tip += " · capped" + (f", pre-cap {tok['pre_cap']:+.3f}" if tok["pre_cap"] is not None else "")
            text = tok["token"] if tok["token"] else "\u2581"
            cls = "aw-tok aw-capped" if tok["capped"] else "aw-tok"
            spans.append(f'<span class="{cls}" style="background:{colour(tok.get("drift"), th)}" '
                         f'data-score="{tok["score"]:.4f}" title="{html.escape(tip)}">{html.escape(text)}</span>')
        parts.append(f'<div class="aw-turn aw-assistant"><div class="aw-role">{html.escape(head)}</div>'
                     f'<div class="aw-text">{"".join(spans)}</div></div>')
    parts.append("</div>")
    return "".join(parts)
