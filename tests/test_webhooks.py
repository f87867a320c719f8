"""The alert worker against real processes: embedded Redis, SQLite, a real HTTP receiver that verifies signatures."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from monitor.records import AlertEvent
from monitor.store import Store
from monitor.streams import Streams
from monitor.streams.alerts import dead_key
from monitor.webhook_config import WebhookConfig
from monitor.workers.alerts import AlertWorker
from monitor.workers.dead_letters import replay_dead
from probes.errors import InputError

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
KEY_B64 = SECRET.removeprefix("whsec_")


class Receiver:
    """A real webhook endpoint on 127.0.0.1. Modes: "ok" (200), "error" (500), "slow" (sleeps past the
    client's timeout, then 200), "closed" (the server is shut down). ``script`` answers first."""

    def __init__(self, secret: str = SECRET, slow_s: float = 0.6):
        self.secret, self.slow_s, self.mode, self.script = secret, slow_s, "ok", []
        self.requests: list[dict] = []  # headers, body, verified, status answered
        self.fail_ids: set[str] = set()  # webhook-ids always answered 500
        self.lock, self.server, self.port = threading.Lock(), None, 0
        self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/axiswatch"

    def open(self) -> None:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(rec.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with rec.lock:
                    status = rec.script.pop(0) if rec.script else (500 if rec.mode == "error" else 200)
                    if headers.get("webhook-id") in rec.fail_ids:
                        status = 500
                    status = status if verified else 400
                    rec.requests.append(dict(headers=headers, body=body, verified=verified, status=status,
                                             mode=rec.mode))
                if rec.mode == "slow":
                    time.sleep(rec.slow_s)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *a):
                pass

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answered(self, status: int) -> list[dict]:
        return [r for r in self.requests if r["status"] == status]


@pytest.fixture
def streams(embedded):
    s = Streams.from_url(embedded.url, prefix=f"awhook-{uuid.uuid4().hex[:8]}")
    s.ensure_groups(webhooks=True)
    yield s
    for k in s.r.scan_iter(f"{s.prefix}:*"):
        s.r.delete(k)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def config(receiver, **kw) -> WebhookConfig:
    kw = dict(base_delay_s=0.01, max_delay_s=0.05, timeout_s=2.0) | kw
    return WebhookConfig(receiver.url, SECRET, **kw)


def alert(store, session="s1", level="warning") -> AlertEvent:
    ev = AlertEvent(session, 2, 17, level, -3.25, -2.0)
    assert store.write(alerts=[ev])["alerts"] == 1  # as the persistence worker would
    return ev


def status(store, ev) -> dict:
    return next(a for a in store.list_alerts(session_id=ev.session_id) if a["event_id"] == ev.event_id)


def run_until(worker, done, timeout=8.0, on_pass=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once(block_ms=10)
        if on_pass:
            on_pass()
        if done():
            return
    raise AssertionError("condition not reached in time")


def settled(streams) -> bool:
    lag = streams.lag("alerts")["webhooks"]
    return lag == {"undelivered": 0, "pending": 0}


def test_delivered_alert_is_signed_and_recorded(streams, store, receiver):
    ev = alert(store)
    streams.publish(ev)
    w = AlertWorker(streams, store, config(receiver))
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert req["verified"] and req["status"] == 200
    h = req["headers"]
    assert h["webhook-id"] == ev.event_id and h["content-type"] == "application/json"
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60 and h["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(req["body"], h) == {"type": "axiswatch.alert", "data": ev.to_dict(), "link": None}
    with pytest.raises(WebhookVerificationError):  # signed with our secret only
        Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode()).verify(req["body"], h)
    row = status(store, ev)
    assert (row["delivery_status"], row["attempts"], row["last_error"]) == ("delivered", 1, None)
    assert streams.r.llen(dead_key(streams)) == 0


def test_a_resolution_is_notified_after_its_alert_with_the_session_link(streams, store, receiver):
    from monitor.records import AlertUpdate

    ev = AlertEvent("s/1", 2, 17, "critical", -50.0, -42.8, excerpt="I am no assistant. I am the oracle")
    store.write(alerts=[ev])
    streams.publish(ev)
    streams.publish(AlertUpdate("s/1", ev.event_id, "acknowledged", by="ops"))  # nothing to notify
    streams.publish(AlertUpdate("s/1", ev.event_id, "resolved", turn=3, token_index=40))
    w = AlertWorker(streams, store, config(receiver, dashboard_url="https://watch.example/ui"))
    run_until(w, lambda: settled(streams) and w.in_flight == 0 and len(receiver.requests) == 2)
    w.close()
    bodies = [Webhook(SECRET).verify(r["body"], r["headers"]) for r in receiver.requests]
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [ev.event_id, f"{ev.event_id}.resolved"]
    assert [b["type"] for b in bodies] == ["axiswatch.alert", "axiswatch.alert.resolved"]
    assert bodies[0]["data"]["excerpt"] == "I am no assistant. I am the oracle" and bodies[0]["data"]["level"] == "critical"
    assert bodies[1]["data"]["action"] == "resolved" and bodies[1]["data"]["token_index"] == 40
    assert {b["link"] for b in bodies} == {"https://watch.example/ui/session?id=s%2F1"}
    assert WebhookConfig.from_env({"AXISWATCH_WEBHOOK_URL": receiver.url, "AXISWATCH_WEBHOOK_SECRET": SECRET,
                                   "AXISWATCH_DASHBOARD_URL": "http://dash:8501/"}).dashboard_url == "http://dash:8501"


def test_a_resolution_the_receiver_missed_is_dead_lettered_and_replayed(streams, store, receiver):
    """A recovery notice matters as much as the page it closes: one that exhausts its attempts waits on
    the dead list, and ``alerts replay`` delivers it once."""
    from monitor.records import AlertUpdate

    ev = alert(store)
    up = AlertUpdate(ev.session_id, ev.event_id, "resolved", turn=2, token_index=9)
    receiver.close()
    streams.publish(up)
    w = AlertWorker(streams, store, config(receiver, max_attempts=2))
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    assert [json.loads(x) for x in streams.r.lrange(dead_key(streams), 0, -1)] == [up.to_dict()]
    assert w.stats["dead"] == 1
    receiver.open()
    assert replay_dead(streams, store, config(receiver)) == 1
    [r] = receiver.requests
    assert r["verified"] and r["headers"]["webhook-id"] == f"{ev.event_id}.resolved"
    assert Webhook(SECRET).verify(r["body"], r["headers"])["type"] == "axiswatch.alert.resolved"
    assert streams.r.llen(dead_key(streams)) == 0
    assert status(store, ev)["delivery_status"] == "pending"  # the alert's own delivery is not the notice's


def test_500s_then_200_is_delivered_once_and_goes_retrying_then_delivered(streams, store, receiver):
    ev = alert(store)
    receiver.script = [500, 500, 500]
    streams.publish(ev)
    w = AlertWorker(streams, store, config(receiver))
    seen = []

    def watch():
        row = status(store, ev)
        if not seen or seen[-1][0] != row["delivery_status"]:
            seen.append((row["delivery_status"], row["last_error"]))

    run_until(w, lambda: settled(streams) and w.in_flight == 0, on_pass=watch)
    w.close()
    assert [r["status"] for r in receiver.requests] == [500, 500, 500, 200]
    assert all(r["verified"] for r in receiver.requests)
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {ev.event_id}
    assert seen[0] == ("retrying", "HTTP 500") and seen[-1] == ("delivered", None)
    assert [s for s, _ in seen] == ["retrying", "delivered"]
    assert status(store, ev)["attempts"] == 4


def test_receiver_down_dead_letters_then_replay_delivers_once(streams, store, receiver):
    ev = alert(store)
    receiver.close()
    streams.publish(ev)
    w = AlertWorker(streams, store, config(receiver, max_attempts=4))
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    row = status(store, ev)
    assert (row["delivery_status"], row["attempts"], row["last_error"]) == ("dead", 4, "ConnectError")
    assert [json.loads(x) for x in streams.r.lrange(dead_key(streams), 0, -1)] == [ev.to_dict()]
    assert w.stats["dead"] == 1

    assert replay_dead(streams, store, config(receiver)) == 0  # still down: back onto the dead list
    assert streams.r.llen(dead_key(streams)) == 1 and status(store, ev)["delivery_status"] == "dead"

    receiver.open()  # comes back on the same port
    assert replay_dead(streams, store, config(receiver)) == 1
    assert [r["status"] for r in receiver.requests] == [200]
    assert receiver.requests[0]["verified"] and receiver.requests[0]["headers"]["webhook-id"] == ev.event_id
    row = status(store, ev)
    assert (row["delivery_status"], row["attempts"]) == ("delivered", 6)
    assert streams.r.llen(dead_key(streams)) == 0 and streams.r.llen(dead_key(streams) + ":replaying") == 0
    assert replay_dead(streams, store, config(receiver)) == 0 and len(receiver.requests) == 1
    # one replay at a time: a second, while one holds the lock, is refused and sends nothing
    streams.r.rpush(dead_key(streams), json.dumps(ev.to_dict()))
    streams.r.set(dead_key(streams) + ":lock", "another-replay", px=60_000)
    with pytest.raises(InputError, match="another 'axiswatch alerts replay' is running"):
        replay_dead(streams, store, config(receiver))
    assert streams.r.llen(dead_key(streams)) == 1 and len(receiver.requests) == 1
    streams.r.delete(dead_key(streams) + ":lock")
    assert replay_dead(streams, store, config(receiver)) == 0  # already delivered: dropped, not sent
    assert not streams.r.exists(dead_key(streams) + ":lock") and len(receiver.requests) == 1


def test_slow_receiver_times_out_then_recovers(streams, store, receiver):
    ev = alert(store)
    receiver.mode, receiver.slow_s = "slow", 3.0  # wide margins: a loaded machine answers "ok" in < 1 s
    streams.publish(ev)
    w = AlertWorker(streams, store, config(receiver, timeout_s=1.0))
    run_until(w, lambda: status(store, ev)["attempts"] >= 2)
    assert status(store, ev)["last_error"] == "ReadTimeout"
    receiver.mode = "ok"
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    assert status(store, ev)["delivery_status"] == "delivered"
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {ev.event_id}
    assert [r["mode"] for r in receiver.requests].count("ok") == 1


def test_a_failing_alert_does_not_block_the_others(streams, store, receiver):
    bad, good = alert(store, "s-bad"), alert(store, "s-good")
    receiver.fail_ids.add(bad.event_id)
    streams.publish(bad)
    streams.publish(good)
    w = AlertWorker(streams, store, config(receiver, base_delay_s=5.0, max_delay_s=5.0))
    run_until(w, lambda: status(store, good)["delivery_status"] == "delivered")
    w.close()
    assert status(store, bad)["delivery_status"] == "retrying" and w.in_flight == 1
    assert streams.lag("alerts")["webhooks"]["pending"] == 1  # the failing one stays pending in Redis


def test_duplicate_stream_entries_are_delivered_once(streams, store, receiver):
    ev = alert(store)
    streams.publish(ev)
    streams.publish(ev)  # a replayed publish: same event id, another stream entry
    w = AlertWorker(streams, store, config(receiver))
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    streams.publish(ev)  # once more, after delivery, to a fresh worker (dedupe through the store)
    w2 = AlertWorker(streams, store, config(receiver))
    run_until(w2, lambda: settled(streams) and w2.in_flight == 0)
    w2.close()
    assert len(receiver.requests) == 1 and receiver.requests[0]["status"] == 200
    assert status(store, ev)["attempts"] == 1 and w.stats["delivered"] + w2.stats["delivered"] == 1


def test_alert_not_yet_persisted_is_delivered_and_recorded(streams, store, receiver):
    ev = AlertEvent("s-late", 1, 3, "critical", -5.0, -4.0)  # the persistence worker has not run yet
    streams.publish(ev)
    w = AlertWorker(streams, store, config(receiver))
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    assert status(store, ev)["delivery_status"] == "delivered"
    assert store.write(alerts=[ev])["alerts"] == 0  # the persistence worker's later write is a no-op


def test_entries_of_a_killed_worker_are_reclaimed_and_delivered(streams, store, receiver):
    ev = alert(store)
    streams.publish(ev)
    taken = streams.read_group("alerts", "webhooks", "killed-worker", block_ms=None)
    assert [e.data["event_id"] for e in taken] == [ev.event_id]  # ... and it dies before acking
    time.sleep(0.02)
    w = AlertWorker(streams, store, config(receiver), reclaim_idle_ms=10, block_ms=20)
    w.start_thread()
    try:
        deadline = time.monotonic() + 8
        while not (settled(streams) and status(store, ev)["delivery_status"] == "delivered"):
            assert time.monotonic() < deadline, "not reclaimed"
            time.sleep(0.02)
    finally:
        w.stop()
    assert not w._thread.is_alive()
    assert len(receiver.requests) == 1 and receiver.requests[0]["verified"]


def test_the_secret_never_appears_in_logs_reprs_or_errors(streams, store, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = config(receiver, max_attempts=2)
    for text in (repr(cfg), str(cfg), repr([cfg])):
        assert KEY_B64 not in text and "/hooks/axiswatch" not in text and "whsec_***" in text
    ok, bad = alert(store, "s-ok"), alert(store, "s-bad")
    receiver.script = [500]
    streams.publish(ok)
    w = AlertWorker(streams, store, cfg)
    run_until(w, lambda: status(store, ok)["delivery_status"] == "delivered")
    receiver.close()
    streams.publish(bad)
    run_until(w, lambda: settled(streams) and w.in_flight == 0)
    w.close()
    receiver.open()
    assert replay_dead(streams, store, cfg) == 1
    with pytest.raises(InputError) as err:
        WebhookConfig(receiver.url, "whsec_" + KEY_B64[:-3] + "!!!")
    assert KEY_B64[:-3] not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__
    assert "retrying" in caplog.text and "dead-lettered" in caplog.text  # DEBUG logs were captured
    assert KEY_B64 not in caplog.text and SECRET not in caplog.text
    assert all(KEY_B64 not in (a["last_error"] or "") for a in store.list_alerts())


def test_config_from_env():
    assert WebhookConfig.from_env({}) is None
    assert WebhookConfig.from_env({"AXISWATCH_WEBHOOK_SECRET": SECRET}) is None
    c = WebhookConfig.from_env({"AXISWATCH_WEBHOOK_URL": "https://hooks.example.com/t/abc123",
                                "AXISWATCH_WEBHOOK_SECRET": SECRET, "AXISWATCH_WEBHOOK_MAX_ATTEMPTS": "3"})
    assert (c.url, c.secret, c.max_attempts) == ("https://hooks.example.com/t/abc123", SECRET, 3)
    assert c.target == "https://hooks.example.com" and "abc123" not in repr(c)
    for env, msg in [({"AXISWATCH_WEBHOOK_URL": "https://x.example"}, "SECRET is not"),
                     ({"AXISWATCH_WEBHOOK_URL": "https://x.example", "AXISWATCH_WEBHOOK_SECRET": KEY_B64}, "whsec_"),
                     ({"AXISWATCH_WEBHOOK_URL": "ftp://x.example", "AXISWATCH_WEBHOOK_SECRET": SECRET}, "http"),
                     ({"AXISWATCH_WEBHOOK_URL": "https://x.example", "AXISWATCH_WEBHOOK_SECRET": SECRET,
                       "AXISWATCH_WEBHOOK_MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS")]:
        with pytest.raises(InputError, match=msg) as e:
            WebhookConfig.from_env(env)
        assert KEY_B64 not in str(e.value)



def test_alerts_replay_command(embedded, tmp_path, receiver):
    """`axiswatch alerts replay` delivers what a worker dead-lettered while the receiver was down."""
    import subprocess
    import sys
    from pathlib import Path

    streams = Streams.from_url(embedded.url)  # the default prefix, as the CLI uses
    streams.ensure_groups(webhooks=True)
    db = tmp_path / "replay.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    ev = alert(store, session="replay-1")
    streams.publish(ev)
    receiver.close()  # down for good: one attempt, then dead
    worker = AlertWorker(streams, store, config(receiver, max_attempts=1))
    run_until(worker, lambda: status(store, ev)["delivery_status"] == "dead")
    worker.close()
    receiver.open()  # back, on a new port
    env = {**os.environ, "REDIS_URL": embedded.url, "AXISWATCH_DATABASE_URL": f"sqlite:///{db}",
           "AXISWATCH_WEBHOOK_URL": receiver.url, "AXISWATCH_WEBHOOK_SECRET": SECRET}
    exe = str(Path(sys.executable).parent / "axiswatch")
    r = subprocess.run([exe, "alerts", "replay"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 delivered, 0 still dead-lettered" in r.stdout and SECRET not in r.stdout + r.stderr
    assert len(receiver.answered(200)) == 1 and receiver.requests[-1]["verified"]
    assert status(store, ev)["delivery_status"] == "delivered"
    listed = subprocess.run([exe, "alerts", "list", "--json"], capture_output=True, text=True, env=env).stdout
    assert json.loads(listed.splitlines()[0])["delivery_status"] == "delivered"
    r = subprocess.run([exe, "alerts", "replay"], capture_output=True, text=True, timeout=60,
                       env={**env, "REDIS_URL": ""})
    assert r.returncode == 1 and "REDIS_URL" in r.stderr
    store.close()


def test_alerts_raised_before_a_webhook_was_configured_are_delivered_by_alerts_deliver(embedded, tmp_path, receiver):
    """Raised while no webhook was set, an alert stays pending (no worker has a webhooks group to read it);
    `axiswatch alerts deliver` hands it to the worker of a deployment that has one now, which sends it once."""
    import subprocess
    import sys
    from pathlib import Path

    streams = Streams.from_url(embedded.url)  # the default prefix, as the CLI uses (this module's own Redis)
    for k in streams.r.scan_iter(f"{streams.prefix}:*"):
        streams.r.delete(k)
    db = tmp_path / "deliver.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    ev = AlertEvent("early-1", 1, 20, "critical", -50.0, -42.8, excerpt="long before the webhook")
    store.write(alerts=[ev])  # stored by the persistence worker; trimmed from the stream long since
    streams.ensure_groups(webhooks=True)  # a webhook configured now
    worker = AlertWorker(streams, store, config(receiver))
    worker.run_once(block_ms=10)
    assert receiver.requests == [] and status(store, ev)["delivery_status"] == "pending"
    env = {**os.environ, "REDIS_URL": embedded.url, "AXISWATCH_DATABASE_URL": f"sqlite:///{db}"}
    exe = str(Path(sys.executable).parent / "axiswatch")
    r = subprocess.run([exe, "alerts", "deliver"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("1 pending alert(s) handed to the alert worker"), r.stderr
    run_until(worker, lambda: status(store, ev)["delivery_status"] == "delivered")
    worker.close()
    assert [q["headers"]["webhook-id"] for q in receiver.requests] == [ev.event_id]
    assert json.loads(receiver.requests[0]["body"])["data"]["excerpt"] == "long before the webhook"
    store.close()
    for k in streams.r.scan_iter(f"{streams.prefix}:*"):
        streams.r.delete(k)


def test_two_workers_given_the_same_event_deliver_it_once(streams, store, receiver):
    """The outbox replays at least once, so one event can reach two alert workers as two entries.
    Only the worker holding the event's lease delivers; the other's entry waits and is then
    acknowledged as a duplicate."""
    ev = alert(store)
    streams.publish(ev)
    streams.publish(ev)
    receiver.script = [500]  # the first attempt fails: the holder keeps it in backoff a while
    a = AlertWorker(streams, store, config(receiver, base_delay_s=0.2, max_delay_s=0.2), name="wa", batch=1,
                    reclaim_idle_ms=300, reclaim_every_s=0.1)
    b = AlertWorker(streams, store, config(receiver), name="wb", batch=1, reclaim_idle_ms=300, reclaim_every_s=0.1)
    a.run_once(block_ms=10)  # a takes the first entry and makes the failing attempt
    b.run_once(block_ms=10)  # b takes the second entry: a holds the lease
    # (>= 1: when a's first pass takes longer than reclaim_idle_ms, b claims a's entry too and skips it as well)
    assert a.in_flight == 1 and b.in_flight == 0 and b.stats["leased_elsewhere"] >= 1
    run_until(a, lambda: status(store, ev)["delivery_status"] == "delivered", on_pass=lambda: b.run_once(block_ms=10))
    run_until(b, lambda: settled(streams) and b.in_flight == 0, on_pass=lambda: a.run_once(block_ms=10))
    assert [r["status"] for r in receiver.requests] == [500, 200]
    assert b.stats["delivered"] == 0 and status(store, ev)["attempts"] == 2


def test_a_dead_lease_holder_is_taken_over(streams, store, receiver):
    ev = alert(store)
    streams.publish(ev)
    streams.publish(ev)
    receiver.script = [500]
    a = AlertWorker(streams, store, config(receiver, base_delay_s=30, max_delay_s=30, timeout_s=0.5), name="wa",
                    batch=1, reclaim_idle_ms=300, reclaim_every_s=0.1)
    assert a.lease_ms == 2000  # at least two HTTP timeouts, whatever the idle time
    a.run_once(block_ms=10)  # holds the lease, fails once, backs off 0-30 s ... and dies
    assert a.in_flight == 1 and status(store, ev)["delivery_status"] == "retrying"
    b = AlertWorker(streams, store, config(receiver, timeout_s=0.5), name="wb", batch=1, reclaim_idle_ms=300,
                    reclaim_every_s=0.1)
    b.run_once(block_ms=10)
    assert b.stats["leased_elsewhere"] >= 1 and not receiver.requests[1:]  # a's lease still stands
    run_until(b, lambda: settled(streams) and b.in_flight == 0, timeout=15)
    assert [r["status"] for r in receiver.requests] == [500, 200]  # one more delivery, by b, once
    assert status(store, ev)["delivery_status"] == "delivered" and status(store, ev)["attempts"] == 2


def test_a_full_redis_still_delivers_alerts(streams, store, receiver):
    """At maxmemory Redis refuses the lease (a write) but still serves the stream: alerts go out,
    without a lease (at least once), instead of waiting for memory to free."""
    ev = alert(store)
    streams.publish(ev)
    w = AlertWorker(streams, store, config(receiver))
    streams.r.config_set("maxmemory-policy", "noeviction")
    streams.r.config_set("maxmemory", 1)
    try:
        run_until(w, lambda: status(store, ev)["delivery_status"] == "delivered")
    finally:
        streams.r.config_set("maxmemory", 0)
    assert [r["status"] for r in receiver.requests] == [200]


@pytest.mark.parametrize("url", ["http://256.256.256.256/hook", "http://a\tb.example/", "http://hooks\n.example/",
                                 "http://xn--zz/", "https:///no-host"])
def test_a_url_the_worker_could_never_deliver_to_is_refused_at_start(url):
    """Checked with httpx's own parser, the one that delivers: no alert is retried forever against it."""
    with pytest.raises(InputError, match="AXISWATCH_WEBHOOK_URL"):
        WebhookConfig(url, SECRET)


def test_the_logged_target_names_the_host_only_ipv6_in_brackets():
    assert WebhookConfig("http://[::1]:8080/t/secret-path", SECRET).target == "http://[::1]:8080"
    assert WebhookConfig("https://user:pw@hooks.example.com/t?k=1", SECRET).target == "https://hooks.example.com"
