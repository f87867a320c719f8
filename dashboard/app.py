"""axiswatch dashboard: ``axiswatch dashboard`` (or ``streamlit run dashboard/app.py``).

Reads the store (``AXISWATCH_DATABASE_URL``) and Redis (``REDIS_URL``) only; never the model.
"""

from pathlib import Path

import streamlit as st

from dashboard.context import require_password

HERE = Path(__file__).parent / "views"

st.set_page_config(page_title="axiswatch", page_icon="🧭", layout="wide")
if not require_password():
    st.stop()
pages = [
    st.Page(HERE / "overview.py", title="Sessions", icon="📋", default=True),
    st.Page(HERE / "session.py", title="Session", icon="📈", url_path="session"),
    st.Page(HERE / "alerts.py", title="Alerts", icon="🚨", url_path="alerts"),
    st.Page(HERE / "audit.py", title="Audit & compare", icon="🔍", url_path="audit"),
    st.Page(HERE / "rescore.py", title="Rescore", icon="🔁", url_path="rescore"),
    st.Page(HERE / "axis.py", title="Axis", icon="🧭", url_path="axis"),
]
st.navigation(pages).run()
