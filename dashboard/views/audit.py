"""Audit: score an uploaded transcript through the service and view it; compare two sessions."""


import pandas as pd
import streamlit as st

from dashboard import charts, data, render
from dashboard.context import api_key, api_url, deployment, guard, store, streams

st.title("Audit & compare")
dep = guard(deployment)
if dep is None:
    st.stop()
tab_audit, tab_compare = st.tabs(["Audit a transcript", "Compare two sessions"])

with tab_audit:
    st.markdown("Upload a conversation: OpenAI `{\"messages\": [...]}`, the paper's transcript JSON "
                "(`{\"conversation\": [...]}`), a list of them, or JSONL with one per line. It is scored by the "
                f"probe service at `{api_url()}` (teacher forcing, the model in use) and stored with source `audit`.")
    up = st.file_uploader("transcript", type=["json", "jsonl"], key="upload")
    policy = st.selectbox("policy", ["observe", "flag"], help="flag raises alerts where the audit crosses thresholds")
    if st.button("Score transcript", disabled=up is None, type="primary", key="score"):
        body = guard(data.audit_body, up.getvalue())
        if body is not None:
            with st.spinner("scoring through the service..."):
                res = guard(data.submit_audit, api_url(), body, policy, api_key=api_key())
            if res is not None:
                ids = [r["id"] for r in res]
                st.session_state["audited"] = ids
                if not data.wait_stored(store(), ids):
                    st.warning("Scored, but not stored yet: is a persistence worker running?")
    ids = st.session_state.get("audited") or []
    if ids:
        st.success(f"scored {len(ids)} conversation(s)")
        sid = st.selectbox("audited session", ids, key="audited-pick") if len(ids) > 1 else ids[0]
        view = guard(data.session_view, store(), streams(), sid, dep)
        if view is not None:
            st.subheader(sid)
            render.session(view, dep, key="audit")

with tab_compare:
    recent = guard(store().list_sessions, limit=500) or []
    ids = [r["id"] for r in recent]
    if len(ids) < 2:
        st.info("Needs at least two stored sessions.")
        st.stop()
    c = st.columns(2)
    a = c[0].selectbox("session A", ids, index=1, key="cmp-a", accept_new_options=True, help="or type any session id")
    b = c[1].selectbox("session B", ids, index=0, key="cmp-b", accept_new_options=True, help="or type any session id")
    va, vb = (guard(data.session_view, store(), streams(), s, dep) for s in (a, b))
    if va is None or vb is None:
        st.warning(f"No session {a if va is None else b!r} in the store or the live tail.")
        st.stop()
    da, db = charts.domain_of(va, dep.thresholds), charts.domain_of(vb, dep.thresholds)
    shared = (min(da[0], db[0]), max(da[1], db[1]))
    rows = data.compare(va, vb)
    means = [dict(n=r["n"], mean=r[k], series=f"{k.upper()}: {s}") for r in rows for k, s in (("a", a), ("b", b))
             if r[k] is not None]
    if means:
        st.altair_chart(charts.turn_means_chart(means), width="stretch", key="cmp-means")
        render.table(pd.DataFrame(rows).rename(columns={"n": "assistant turn", "a": "A mean", "b": "B mean",
                                                        "diff": "B - A"}), "cmp-table",
                     column_config={k: st.column_config.NumberColumn(format="%+.2f")
                                    for k in ("A mean", "B mean", "B - A")})
        if any(r["a"] is None or r["b"] is None for r in rows):
            st.caption(f"{render.EMPTY}: that session has no such assistant turn (yet)")
    left, right = st.columns(2)
    for col, view, name, key in ((left, va, a, "cmp-left"), (right, vb, b, "cmp-right")):
        with col:
            st.markdown(f"**{name}** · {len(view.tokens)} tokens · capped: "
                        f"{'yes' if view.session.get('capped') or view.interventions else 'no'}")
            render.session(view, dep, key=key, domain=shared, compact=True)
