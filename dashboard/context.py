"""What every dashboard page shares: settings, the store, Redis and the deployment (cached per process).

The dashboard reads the same environment as the service: ``AXISWATCH_DATABASE_URL`` (default
``sqlite:///axiswatch.db``), ``REDIS_URL`` (unset: no live tail, history only), and for the audit
page ``AXISWATCH_API_URL`` (default: the running replica's address, else ``http://127.0.0.1:8000``) and
``AXISWATCH_API_KEY`` when the service requires keys. ``AXISWATCH_DASHBOARD_PASSWORD`` asks for a password.
"""

from __future__ import annotations

import hmac
import os
import time

import streamlit as st

from dashboard import data
from monitor.auth import client_key
from monitor.errors import AxiswatchError
from monitor.settings import Settings
from monitor.store import Store
from monitor.streams import Streams


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource(show_spinner=False)
def store() -> Store:
    s = Store(settings().database_url)
    s.migrate()
    return s


@st.cache_resource(show_spinner=False)
def streams() -> Streams | None:
    url = settings().redis_url
    return Streams.from_url(url) if url else None


@st.cache_data(ttl=10, show_spinner=False)
def deployment() -> data.Deployment:
    return data.deployment(streams(), settings())


def api_url() -> str:
    return os.environ.get("AXISWATCH_API_URL") or deployment().api_url


def api_key() -> str | None:
    return client_key()


def require_password() -> bool:
    """With ``AXISWATCH_DASHBOARD_PASSWORD`` set, ask for it once per browser session (compared in
    constant time); without it the dashboard is open: bind it to 127.0.0.1 or put it behind a proxy."""
    password = os.environ.get("AXISWATCH_DASHBOARD_PASSWORD")
    if not password or st.session_state.get("aw_authenticated"):
        return True
    st.title("axiswatch")
    entered = st.text_input("Password", type="password", key="aw_password")
    if entered:
        if hmac.compare_digest(entered.encode(), password.encode()):
            st.session_state["aw_authenticated"] = True
            del st.session_state["aw_password"]
            st.rerun()
        st.error("Wrong password.")
    return False


def guard(fn, *args, **kw):
    """Run a data function; an axiswatch error becomes a red box instead of a traceback (None)."""
    try:
        return fn(*args, **kw)
    except AxiswatchError as e:
        st.error(str(e))
        return None


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    d = max(0.0, (now or time.time()) - ts)
    return f"{d:.0f} s ago" if d < 90 else f"{d / 60:.0f} min ago" if d < 5400 else f"{d / 3600:.1f} h ago"
