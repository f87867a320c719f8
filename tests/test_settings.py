"""Settings: one frozen object from the environment, clear errors for bad values."""

import base64
import dataclasses
import os

import pytest

from monitor.settings import Settings
from probes.errors import InputError

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_defaults():
    s = Settings.from_env({})
    assert (s.model, s.redis_url, s.database_url, s.policy, s.port) == ("default", None, "sqlite:///axiswatch.db", "flag", 8000)
    assert s.thresholds == (None, None, None) and s.webhook is None and (s.ewma_alpha, s.min_tokens, s.cooldown_tokens) == (None, None, 64)
    _, drift = s.drift_setup({"alerting": {"thresholds": {"watch": -1.0, "warning": -2.0, "critical": -3.0},
                                         "alpha": 0.05, "min_tokens": 8}})
    assert (drift.alpha, drift.min_tokens, drift.baseline) == (0.05, 8, "session")  # the calibration's settings


def test_overrides_and_secret_hidden():
    s = Settings.from_env({"REDIS_URL": "redis://h:6379/1", "AXISWATCH_THRESHOLD_WATCH": "5",
                           "AXISWATCH_THRESHOLD_WARNING": "0", "AXISWATCH_THRESHOLD_CRITICAL": "-5",
                           "AXISWATCH_MIN_TOKENS": "4", "AXISWATCH_WEBHOOK_URL": "https://hooks.example/x",
                           "AXISWATCH_WEBHOOK_SECRET": SECRET, "AXISWATCH_POLICY": "cap"})
    assert s.redis_url == "redis://h:6379/1" and s.thresholds == (5.0, 0.0, -5.0) and s.min_tokens == 4
    assert s.webhook.url == "https://hooks.example/x" and SECRET not in repr(s) and s.policy == "cap"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.policy = "observe"  # frozen


@pytest.mark.parametrize("env, message", [
    ({"AXISWATCH_THRESHOLD_WATCH": "high"}, "AXISWATCH_THRESHOLD_WATCH"),
    ({"AXISWATCH_MIN_TOKENS": "many"}, "AXISWATCH_MIN_TOKENS"),
    ({"AXISWATCH_PORT": "99999"}, "AXISWATCH_PORT"),
    ({"AXISWATCH_BATCH_SIZE": "0"}, "AXISWATCH_BATCH_SIZE"),
    ({"AXISWATCH_WEBHOOK_URL": "https://x/y"}, "AXISWATCH_WEBHOOK_SECRET"),
])
def test_bad_values(env, message):
    with pytest.raises(InputError, match=message):
        Settings.from_env(env)


def test_threshold_override_reaches_the_engine(tmp_path, tiny_env):
    from monitor import service

    rt = service.start(Settings.from_env({**tiny_env, "AXISWATCH_THRESHOLD_WATCH": "3", "AXISWATCH_THRESHOLD_WARNING": "2",
                                          "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}), workers=False)
    try:
        t = rt.engine.thresholds
        from monitor.drift import thresholds_from_calibration

        calibrated = thresholds_from_calibration(rt.engine.axis.calibration)[0]
        assert (t.watch, t.warning, t.critical) == (3.0, 2.0, calibrated.critical)
    finally:
        rt.close()
    bad = Settings.from_env({**tiny_env, "AXISWATCH_THRESHOLD_WATCH": "-100",
                             "AXISWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    with pytest.raises(InputError, match="watch > warning > critical"):
        service.start(bad, workers=False)


def test_a_baseline_override_needs_thresholds_in_its_own_units(shipped):
    """The shipped thresholds are drifts below a session's reference: switching the statistic to the absolute
    running score without thresholds for it is refused, with all three given it is accepted."""
    with pytest.raises(InputError, match="calibrated for the 'session' baseline"):
        Settings.from_env({"AXISWATCH_DRIFT_BASELINE": "absolute"}).drift_setup(shipped.calibration)
    th, cfg = Settings.from_env({"AXISWATCH_DRIFT_BASELINE": "absolute", "AXISWATCH_THRESHOLD_WATCH": "-5",
                                 "AXISWATCH_THRESHOLD_WARNING": "-10", "AXISWATCH_THRESHOLD_CRITICAL": "-20"}
                                ).drift_setup(shipped.calibration)
    assert cfg.baseline == "absolute" and (th.watch, th.warning, th.critical) == (-5, -10, -20)
    th, cfg = Settings().drift_setup(shipped.calibration)
    assert cfg.baseline == "session" and th.critical < th.warning < th.watch < 0


@pytest.mark.parametrize("host, url", [("127.0.0.1", "http://127.0.0.1:8000"), ("0.0.0.0", "http://127.0.0.1:8000"),
                                       ("::", "http://127.0.0.1:8000"), ("::1", "http://[::1]:8000"),
                                       ("fe80::2", "http://[fe80::2]:8000"), ("example.org", "http://example.org:8000")])
def test_the_local_api_url_is_one_rule_for_serve_and_the_dashboard(host, url):
    """serve announces it and the dashboard falls back to it: an IPv6 host in brackets, a wildcard as loopback."""
    from dashboard.data import deployment

    s = Settings(host=host)
    assert s.api_url() == url
    assert deployment(None, s).api_url == url  # no replica announced one: read from the settings


def test_the_capping_folder_is_the_override_else_the_axis_folder(tmp_path):
    from monitor.settings import shipped_dir

    assert Settings().capping_dir() == shipped_dir()  # the shipped axis folder holds a capping config
    assert Settings(capping=str(tmp_path)).capping_dir() is None  # an override without capping.json: no capping
    (tmp_path / "capping.json").write_text("{}")
    assert Settings(capping=str(tmp_path)).capping_dir() == tmp_path
    assert Settings(axis=str(tmp_path / "elsewhere")).capping_dir() is None
    # a file in the folder names the folder, as the artifact loaders take it
    assert Settings(capping=str(tmp_path / "capping.json")).capping_dir() == tmp_path
    assert Settings(axis=str(shipped_dir() / "axis.json")).capping_dir() == shipped_dir()


def test_the_backend_list_is_the_one_serve_offers():
    from click.testing import CliRunner

    from monitor.cli import cli
    from monitor.settings import BACKENDS

    out = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "[hf|vllm]" in out and BACKENDS == ("hf", "vllm")
    with pytest.raises(InputError, match="AXISWATCH_BACKEND must be one of hf, vllm"):
        Settings.from_env({"AXISWATCH_BACKEND": "tgi"})


def test_an_axis_calibrated_with_a_level_runs_both_detectors_unless_switched_off():
    """The shipped register-balanced axis carries drift and level thresholds: the engine's tracker runs both;
    AXISWATCH_LEVEL_DETECTOR=off runs the drift alone; an axis calibrated without a level runs the drift."""
    import copy

    from monitor.drift import DriftTracker
    from monitor.settings import shipped_dir
    from probes.artifacts import read_axis_meta

    cal = read_axis_meta(shipped_dir())["calibration"]
    th, cfg = Settings.from_env({}).drift_setup(cal)
    level = cal["alerting"]["level"]
    assert cfg.level_thresholds == tuple(level["thresholds"][k] for k in ("watch", "warning", "critical"))
    assert cfg.level_alpha == level["alpha"] == 0.02
    assert [d.name for d in DriftTracker(th, cfg).detectors] == ["drift", "level"]
    _, off = Settings.from_env({"AXISWATCH_LEVEL_DETECTOR": "off"}).drift_setup(cal)
    assert off.level_thresholds is None and [d.name for d in DriftTracker(th, off).detectors] == ["drift"]
    older = copy.deepcopy(cal)
    del older["alerting"]["level"]  # an axis calibrated by an earlier release
    _, drift_only = Settings.from_env({}).drift_setup(older)
    assert drift_only.level_thresholds is None
    with pytest.raises(InputError, match="AXISWATCH_LEVEL_DETECTOR must be on or off"):
        Settings.from_env({"AXISWATCH_LEVEL_DETECTOR": "maybe"})
