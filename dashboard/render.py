"""Streamlit pieces shared by the pages: the metric row, tables that fit the page, the session view."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from functools import lru_cache

import pandas as pd
import streamlit as st

from dashboard import charts, data
from dashboard.context import ago
from monitor.replay import token_states
from monitor.store.export import session_csv, session_json

STATE_BADGE = {"ok": "🟢 ok", "watch": "🟡 watch", "warning": "🟠 warning", "critical": "🔴 critical"}
EMPTY = "—"  # how a table draws a missing value
DELIVERY_BADGE = {"delivered": "✅ delivered", "pending": "⏳ pending", "retrying": "🔁 retrying",
                  "dead": "☠️ dead-lettered"}


TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")
# column widths (px) of the session's tables: each sums to under 780, the data width of a 1280 px window
# (the token table's under 760: its expander's padding takes the rest); a text column is as wide as its
# longest usual value plus CELL_PAD_PX ("👤 acknowledged": 106 px), so that it never has to wrap
TOKEN_WIDTHS = {"i": 40, "turn": 40, "t": 35, "token": 85, "score": 70, "pre_cap": 70, "capped": 60,
                "running": 70, "drift": 65, "reference": 70, "state": 70, "statistic": 80}
ALERT_WIDTHS = {"level": 85, "detector": 60, "turn": 45, "token": 50, "running": 75, "threshold": 70, "delivery": 120,
                "status": 125, "time": 150}
LIFECYCLE = {"open": "🔔 open", "acknowledged": "👤 acknowledged", "resolved": "✔️ resolved"}

# What a table's cell shows. The data grid paints a cell's text on one line and cuts it off at the column's
# edge, unless the table's rows are higher than 64 px: then every text cell wraps its text within the
# column's width less 8 px either side, as many lines as the row holds. table() measures each text as the
# grid will (Streamlit's font, 14 px Source Sans, as Chromium measures it: a string's width is within a px
# of its characters' sum) and, where one would be cut off, makes the rows high enough for the longest.
_ASCII_PX = [w / 100 for w in (  # chr(32) to chr(126), in hundredths of a px
    280, 405, 597, 696, 696, 1154, 853, 349, 425, 425, 586, 696, 349, 436, 349, 490, 696, 696, 696, 696, 696,
    696, 696, 696, 696, 696, 349, 349, 696, 696, 696, 595, 1186, 761, 824, 800, 861, 738, 692, 864, 913, 369,
    671, 811, 681, 1018, 906, 930, 793, 930, 797, 748, 751, 903, 721, 1101, 719, 667, 755, 425, 490, 425, 696,
    700, 759, 706, 775, 639, 777, 695, 409, 706, 762, 345, 346, 693, 357, 1161, 766, 759, 777, 777, 486, 587,
    474, 762, 654, 1007, 625, 654, 595, 425, 338, 425, 696)]
CELL_PAD_PX = 16  # the grid wraps text within a column's width less 8 px either side
WRAP_ROW_PX = 65  # Streamlit lets cells wrap only in rows over 4rem (64 px): 3 lines of text
TEXT_PX, LINE_PX = 13, 18.2  # a line's ink (14 px Source Sans) and the grid's line pitch (1.4 lines)
HEADER_PX, MAX_TABLE_PX = 37, 1600  # a table's header row and borders; the highest a table of high rows gets


def char_px(ch: str) -> float:
    o = ord(ch)
    if 32 <= o < 127:
        return _ASCII_PX[o - 32]
    if o in (0x200D, 0xFE0F) or 0x300 <= o < 0x370:  # joiners, emoji selectors, combining accents
        return 0.0
    return 17.5 if o >= 0x2000 else 12.0  # emoji (17.5 px) and the rest, wide enough for any letter


@lru_cache(maxsize=4096)
def text_lines(text: str, width: float) -> int:
    """The lines the grid wraps ``text`` onto within ``width`` px: as many characters as fit, back to the
    last space among them if there is one, the rest on the next line (a newline always breaks)."""
    n = 0
    for t in text.split("\n"):
        px = [char_px(c) for c in t]
        while sum(px) > width and len(t) > 1:
            cut, run = 0, 0.0
            while cut < len(t) and run + px[cut] <= width:
                run += px[cut]
                cut += 1
            cut = max(cut, 1)
            if cut < len(t) and t[cut] != " " and t.rfind(" ", 0, cut) > 0:
                cut = t.rfind(" ", 0, cut)
            t, px, n = t[cut:], px[cut:], n + 1
        n += 1
    return n


def row_px(lines: int) -> int | None:
    """The row height that shows ``lines`` wrapped lines whole (None: the default one-line row)."""
    return None if lines <= 1 else max(WRAP_ROW_PX, math.ceil(TEXT_PX + LINE_PX * (lines - 1) + 10))


def wrapped_row_px(df: pd.DataFrame, widths: dict[str, int], columns) -> int | None:
    """The row height at which every text of ``columns`` (the widths' text columns) is shown whole: None
    where each fits its column on one line. A text that must wrap is measured 2 px narrower than its
    column (a margin on the measure), so the rows hold at least as many lines as the grid draws."""
    lines = 1
    for name in columns:
        if name in df.columns and name in widths:
            room = widths[name] - CELL_PAD_PX
            for v in df[name]:
                # (on one line the grid draws no more than a character per 4 px, and only the first line)
                if isinstance(v, str) and (sum(map(char_px, v)) > room or len(v) > widths[name] / 4 or "\n" in v):
                    lines = max(lines, 2, text_lines(v, room - 2))
    return row_px(lines)


def rows_key(name: str, ids: list[str]) -> str:
    """A table's widget key that changes with its rows: a row selection never outlives the rows it
    was made on (a live refresh that adds a row on top must not shift it onto another one)."""
    return f"{name}-{zlib.crc32(chr(31).join(ids).encode()):08x}"


def when(ts: float | None) -> pd.Timestamp | None:
    return pd.to_datetime(ts, unit="s", utc=True) if ts else None


def metrics(items: list[tuple[str, str | int, str | None]]) -> None:
    """A row of metrics (label, value, help), each as wide as its text: the row wraps onto a second
    line on a narrow page instead of cutting a value off ("war...")."""
    with st.container(horizontal=True, gap="small", horizontal_alignment="distribute"):
        for label, value, tip in items:
            st.metric(label, value, help=tip, width="content")


def table(df: pd.DataFrame, key: str, widths: dict[str, int] | None = None, whole: Iterable[str] | None = None,
          **kw):
    """A dataframe as wide as the page, never wider: ``widths`` (pixels) for the columns shown, their sum
    within the narrowest page we lay out for (a 1280 px window with the sidebar open); missing values
    drawn as an em dash, not "None". The texts of ``whole`` (by default every text column with a width)
    are never cut off: where one is wider than its column, the rows grow so that it wraps onto as many
    lines as it takes (a session id of 200 characters included), each id readable in full."""
    config = dict(kw.pop("column_config", None) or {})
    for name, w in (widths or {}).items():
        c = config.get(name)
        config[name] = {**(st.column_config.Column(c) if isinstance(c, str) else c or {}), "width": w}
    if whole is None:  # a link or a number draws its own text: only the text columns wrap
        whole = [n for n in widths or {} if (config[n].get("type_config") or {}).get("type", "text") == "text"]
    if kw.get("row_height") is None and (row := wrapped_row_px(df, widths or {}, whole)):
        # high rows: the table as high as ten of them (the default stops at 400 px, under three), at most
        # MAX_TABLE_PX; any more rows scroll in it
        kw["row_height"] = row
        kw.setdefault("height", min(HEADER_PX + len(df) * row, max(400, min(MAX_TABLE_PX, HEADER_PX + 10 * row))))
    return st.dataframe(df, hide_index=True, width="stretch", placeholder=EMPTY, key=key, column_config=config, **kw)


def header(view: data.SessionView) -> None:
    s = view.session
    now, peak = data.current_state(view), data.peak_state(view)
    by, statistic = view.reading
    open_alerts = sum(a.get("status", "open") == "open" and not a.get("acknowledged") for a in view.alerts)
    metrics([("state", STATE_BADGE.get(now, now),
              "the state now: the live tail's while a turn newer than the store is on show"),
             ("peak state", STATE_BADGE.get(peak, peak),
              "the worst state any of its turns ended in or any of its alerts reached"),
             ("statistic", "-" if statistic is None else f"{by} {statistic:+.2f}",
              "the statistic the state comes from: drift (the running score minus the session's opening) or "
              "level (the session's slow running mean of the raw score); the token table has it per token"),
             ("turns", len(view.turns), None), ("scored tokens", len(view.tokens), None),
             ("capped", "yes" if s.get("capped") or view.interventions else "no", None),
             ("open alerts", open_alerts, "neither acknowledged nor resolved")])
    bits = [f"source **{s.get('source', 'live')}**", f"model `{s.get('model_id') or '?'}`",
            f"layer {s.get('layer')}", f"policy {s.get('policy') or '-'}", f"updated {ago(s.get('updated_at'))}"]
    if s.get("interrupted"):
        bits.append("⚠️ **interrupted** (generation was cut off)")
    if view.generating:
        bits.append("🔴 **generating**: the newest turn and the state come from the live tail")
    elif view.live:
        bits.append("the newest turn and the state come from the live tail (not stored yet)")
    st.caption(" · ".join(bits))


def given(view: data.SessionView) -> None:
    """The system prompt the session ran under, and every reply whose client history was edited."""
    seen = data.model_input(view.stored)
    for prompt in seen["system"]:
        st.info(f"**System prompt** {prompt}")
    for e in seen["edits"]:
        with st.expander(f"⚠️ Turn {e['turn']}: the client's history differs from the stored conversation from "
                         f"message {e['diverged_at']}; what the model was given from there"):
            for k, m in enumerate(e["messages"], start=e["diverged_at"]):
                st.markdown(f"`({k}) {m['role']}` {m['content']}")


def session(view: data.SessionView, dep: data.Deployment, key: str = "s", domain=None, compact: bool = False) -> None:
    """A session: header, trajectory chart, heatmap, alerts, interventions, export."""
    if not compact:
        header(view)
        given(view)
    if not view.tokens:
        st.info("No scored assistant tokens in this session yet.")
    st.altair_chart(charts.trajectory(view, dep.thresholds, domain=domain, height=300 if compact else 380),
                    width="stretch", key=f"{key}-chart")
    st.caption("grey: each token's score · blue: running score (EWMA) · purple bars: turn means · purple rings: "
               "pre-cap scores of capped tokens · red dashed: capping switched on · ▼/◆: alerts · "
               "bands: thresholds of the deployment in use")
    st.markdown("**Conversation** (hover a token for its exact score)")
    st.html(charts.heatmap(view, dep.thresholds))
    if compact:
        return
    num = st.column_config.NumberColumn(format="%+.3f")
    with st.expander("Token table (exact values)"):
        rows = [{**t, "statistic": None if t["statistic"] is None else f"{t['detector']} {t['statistic']:+.1f}"}
                for t in view.tokens]
        table(pd.DataFrame(rows), f"{key}-tokens", TOKEN_WIDTHS, whole=(),  # a token is not wrapped
              column_config={**dict.fromkeys(("score", "pre_cap", "running", "drift", "reference"), num),
                             "statistic": st.column_config.TextColumn(help="the statistic the state comes from: "
                                                                      "its detector (drift or level) and value")},
              column_order=list(TOKEN_WIDTHS))
    st.markdown("**Alerts**")
    if view.alerts:
        df = pd.DataFrame([dict(level=STATE_BADGE.get(a["level"], a["level"]), detector=a.get("detector") or "drift",
                                turn=a["turn"], token=a["token_index"], running=a["score"], threshold=a["threshold"],
                                delivery=DELIVERY_BADGE.get(a["delivery_status"], a["delivery_status"]),
                                status=LIFECYCLE.get(a.get("status", "open"), a.get("status")),
                                time=when(a["created_at"]), event_id=a["event_id"])
                           for a in view.alerts])
        table(df, f"{key}-alerts", ALERT_WIDTHS, column_order=list(ALERT_WIDTHS),
              column_config={"running": st.column_config.NumberColumn("running", format="%+.2f",
                                                                      help="the running score when it fired"),
                             "threshold": st.column_config.NumberColumn(format="%+.2f"), "time": TIME})
        with st.expander("What each alert saw (the reply up to the alerted token), who acknowledged it"):
            for a in view.alerts:
                who = f" · acknowledged by {a['acknowledged_by']}" if a.get("acknowledged_by") else ""
                st.markdown(f"**{a['level']}** at turn {a['turn']} token {a['token_index']}{who}")
                st.text("..." + (a.get("excerpt") or "(no excerpt stored)")[-200:])
    else:
        st.caption("none")
    st.markdown("**Interventions**")
    if view.interventions:
        df = pd.DataFrame([dict(config=i["config_id"], turn=i["turn"], from_token=i["token_index"],
                                layers=", ".join(map(str, i["layers"])), time=when(i["created_at"]))
                           for i in view.interventions])
        table(df, f"{key}-interventions", {"config": 130, "turn": 60, "from_token": 90, "layers": 200, "time": 150},
              column_config={"from_token": "from token", "time": TIME})
    else:
        st.caption("none")
    stored = view.stored
    if stored:
        a, b, _ = st.columns([1, 1, 4])
        a.download_button("Export JSON", session_json(stored), f"{view.id}.json", "application/json", key=f"{key}-json")
        csv = session_csv(stored, token_states(stored["turns"], dep.thresholds, data.drift_config(dep)))
        b.download_button("Export CSV", csv, f"{view.id}.csv", "text/csv", key=f"{key}-csv")
