"""deploy/: the systemd units pass `systemd-analyze verify`, the alert rules pass promtool's own tests, and the
files agree with the app's settings (stop timeouts, upload cap, SSE location, documented variables)."""
import configparser
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.services import require
from core import config as app_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
INSTALL_DIR = "/opt/pdfqueue"


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / name)
    return parser


def env_example():
    lines = (DEPLOY / "pdfqueue.env.example").read_text().splitlines()
    return dict(line.lstrip("#").split("=", 1) for line in lines if re.match(r"^#?[A-Z_]+=", line))


def defaults():
    return app_config.derive(app_config.from_env())


def test_there_are_units_for_web_worker_and_gateway():
    assert [u.name for u in UNITS] == ["pdfqueue-gateway.service", "pdfqueue-web.service", "pdfqueue-worker.service"]


def test_systemd_accepts_the_units(tmp_path):
    """verify needs the ExecStart binaries to exist: point the units at this checkout's .venv instead of /opt."""
    analyze = require("systemd-analyze", "systemd's tools")
    for path in UNITS:
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALL_DIR, str(REPO)))
    result = subprocess.run([analyze, "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, only warning: any output at all is a failure here.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr


def test_the_verify_check_catches_a_bad_unit(tmp_path):
    analyze = require("systemd-analyze", "systemd's tools")
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nKillSignal=SIGNOPE\nRestartt=always\n")
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "SIGNOPE" in result.stderr and "Restartt" in result.stderr


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_every_unit_restarts_on_failure_and_reads_the_env_file(path):
    service = unit(path.name)["Service"]
    assert service["Restart"] == "on-failure"
    # The gateway has an env file of its own: pdfqueue.env holds secrets it must not see.
    expected = "gateway.env" if path.name == "pdfqueue-gateway.service" else "pdfqueue.env"
    assert service["EnvironmentFile"] == f"/etc/pdfqueue/{expected}"
    assert service["User"] != "root"


def test_the_gateway_is_confined_away_from_pdfqueues_data_secrets_and_network():
    service = unit("pdfqueue-gateway.service")["Service"]
    assert service["DynamicUser"] == "yes" and service["User"] not in ("pdfqueue", "root")
    assert "pdfqueue.env" not in (DEPLOY / "pdfqueue-gateway.service").read_text().replace("never pdfqueue.env", "")
    assert {"/var/lib/pdfqueue", "/etc/pdfqueue"} <= {p.lstrip("-") for p in service["InaccessiblePaths"].split()}
    assert (service["IPAddressDeny"], service["IPAddressAllow"]) == ("any", "localhost")
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["SystemCallFilter"] and service["MemoryMax"] and service["TasksMax"]
    gateway_env = (DEPLOY / "pdfqueue-gateway.env.example").read_text()
    assert not re.search(r"^(SECRET_KEY|DATABASE_URL|REDIS_URL|METRICS_TOKEN)=", gateway_env, re.M)


def test_systemd_rates_the_gateways_exposure_low(tmp_path):
    analyze = require("systemd-analyze", "systemd's tools")
    path = tmp_path / "pdfqueue-gateway.service"
    path.write_text((DEPLOY / path.name).read_text().replace(INSTALL_DIR, str(REPO)))
    result = subprocess.run([analyze, "security", "--offline=yes", str(path)], capture_output=True, text=True,
                            timeout=60)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert exposure <= 2.0, result.stdout  # 7.0 (MEDIUM) before the unit was confined


def test_the_worker_stops_gracefully_and_outlasts_a_gateway_call():
    service = unit("pdfqueue-worker.service")["Service"]
    assert service["KillSignal"] == "SIGINT"
    stop_timeout = int(service["TimeoutStopSec"])
    env = env_example()
    gateway_timeout = float(env["GATEWAY_TIMEOUT"])
    assert gateway_timeout == defaults()["GATEWAY_TIMEOUT"]
    # conversions may run their whole gateway call, then systemd still waits for the release before SIGKILL
    assert gateway_timeout < float(env["WORKER_SHUTDOWN_SECONDS"]) < stop_timeout


def test_nginx_allows_the_apps_request_cap_and_streams_events():
    site = (DEPLOY / "nginx" / "pdfqueue.conf").read_text()
    body_mb = int(re.search(r"client_max_body_size (\d+)m;", site).group(1))
    assert body_mb * 1024 * 1024 == defaults()["MAX_CONTENT_LENGTH"]
    events = re.search(r"location = /api/events \{(.*?)\}", site, re.S).group(1)
    assert "proxy_buffering off;" in events
    read_timeout = re.search(r"proxy_read_timeout (\d+)([smh]);", events)
    assert int(read_timeout.group(1)) * {"s": 1, "m": 60, "h": 3600}[read_timeout.group(2)] > 15  # > SSE heartbeat
    assert "listen 443 ssl;" in site and "X-Forwarded-Proto" in site


def test_the_alert_rules_pass_their_promtool_tests():
    promtool = require("promtool", "Prometheus's rule checker")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    rules = (DEPLOY / "alerts.yml").read_text()
    for alert in ("PdfqueueQueueDeep", "PdfqueueFailureRate", "PdfqueueNoWorkerHeartbeat"):
        assert f"alert: {alert}" in rules


def test_the_env_files_name_only_settings_that_exist():
    from gateway.config import GatewaySettings
    assert set(env_example()) - set(app_config.Settings.model_fields) == set()
    lines = (DEPLOY / "pdfqueue-gateway.env.example").read_text().splitlines()
    gateway = {line.lstrip("#").split("=", 1)[0] for line in lines if re.match(r"^#?[A-Z_]+=", line)}
    assert gateway - {f"GATEWAY_{name}" for name in GatewaySettings.model_fields} == set()