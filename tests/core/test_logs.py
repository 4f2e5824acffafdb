"""One JSON log format for every process: the web app, gunicorn, the worker and the gateway."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gateway.testing import running_gateway
from core import logs

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"ts", "level", "logger", "message"}


def test_the_formatter_writes_the_shared_keys():
    record = logging.LogRecord("pdfqueue.worker", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    record.job_id = "j1"
    line = json.loads(logs.formatter().format(record))
    assert KEYS <= set(line) and (line["logger"], line["level"], line["message"], line["job_id"]) == \
        ("pdfqueue.worker", "INFO", "job j1 done", "j1")


def test_every_line_of_the_gateways_gunicorn_is_json_in_the_shared_format(tmp_path):
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log, running_gateway({"GATEWAY_WORKERS": "1"}, log) as url:
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # a plain-text line (gunicorn's own, say) fails here
    assert {record["logger"] for record in records} >= {"gunicorn.error", "gateway.access"}
    assert all(KEYS <= set(record) for record in records)


def test_the_web_gunicorn_config_logs_in_the_shared_format():
    # gunicorn.conf.py is read by gunicorn itself; load it the way gunicorn does and look at its log config.
    code = "import runpy, json; print(json.dumps(runpy.run_path('gunicorn.conf.py')['logconfig_dict']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    config = json.loads(done.stdout)
    assert config["formatters"]["json"]["fmt"] == logs.FIELDS
    assert config["formatters"]["json"]["rename_fields"] == logs.RENAMED
    assert set(config["loggers"]) == {"gunicorn.error", "gunicorn.access"}


def test_web_access_lines_are_json_fields_with_a_duration():
    # gunicorn's own Logger, configured from gunicorn.conf.py's logconfig_dict, writing one access line.
    code = """
import runpy, datetime, types
from gunicorn.config import Config
from gunicorn import glogging
cfg = Config()
cfg.set("logconfig_dict", runpy.run_path("gunicorn.conf.py")["logconfig_dict"])
cfg.set("accesslog", "-")
log = glogging.Logger(cfg)
resp = types.SimpleNamespace(status="201 CREATED", sent=42, headers=[("Content-Type", "application/json")])
req = types.SimpleNamespace(headers=[("USER-AGENT", "curl/8")])
environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/api/upload", "PATH_INFO": "/api/upload", "QUERY_STRING": "",
           "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.9"}
log.access(resp, req, environ, datetime.timedelta(seconds=1, microseconds=234500))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS <= set(line) and line["logger"] == "gunicorn.access"
    assert (line["method"], line["path"], line["status"], line["bytes"], line["duration_ms"], line["remote_addr"]) == \
        ("POST", "/api/upload", 201, 42, 1234.5, "10.0.0.9")




@pytest.mark.parametrize("kind", ["d", "link", "setup"])
def test_share_invitation_reset_and_set_up_secrets_are_redacted_from_the_access_log(kind):
    code = """if True:
        import datetime, runpy
        from types import SimpleNamespace
        from gunicorn.config import Config
        from gunicorn.glogging import Logger
        cfg = Config()
        cfg.set("logconfig_dict", runpy.run_path("gunicorn.conf.py")["logconfig_dict"])
        cfg.set("accesslog", "-")
        response = SimpleNamespace(status="200 OK", response_length=10, headers=[], sent=10)
        request = SimpleNamespace(headers=[], method="GET", path="/KIND/abc.DEF-g_h", query="",
                                  uri="/KIND/abc.DEF-g_h", version=(1, 1))
        environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/KIND/abc.DEF-g_h?x=1", "PATH_INFO": "/KIND/abc.DEF-g_h",
                   "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
                   "HTTP_REFERER": "https://pdfqueue.example.com/KIND/abc.DEF-g_h"}
        Logger(cfg).access(response, request, environ, datetime.timedelta(seconds=0.1))
    """.replace("KIND", kind)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert "abc.DEF" not in done.stdout
    assert (line["message"], line["path"], line["query"]) == ("request", f"/{kind}/[redacted]", "x=1")


# -- for people at a terminal ---------------------------------------------------------------------


def test_in_text_format_every_process_writes_short_readable_lines_and_access_lines_stay_redacted():
    code = """if True:
        import datetime, logging, runpy
        from types import SimpleNamespace
        from gunicorn.config import Config
        from gunicorn.glogging import Logger
        from core import logs
        cfg = Config()
        cfg.set("logconfig_dict", runpy.run_path("gunicorn.conf.py")["logconfig_dict"])
        cfg.set("accesslog", "-")
        response = SimpleNamespace(status="200 OK", response_length=10, headers=[], sent=10)
        request = SimpleNamespace(headers=[], method="GET", path="/d/abc.DEF", query="", uri="/d/abc.DEF",
                                  version=(1, 1))
        environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/d/abc.DEF", "PATH_INFO": "/d/abc.DEF", "QUERY_STRING": "",
                   "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
        Logger(cfg).access(response, request, environ, datetime.timedelta(seconds=0.0123))
        logs.configure("INFO", "text")
        logging.getLogger("worker.run").warning("job done", extra={"job_id": "j1", "correlation_id": "c1"})
    """
    env = {**__import__("os").environ, "LOG_FORMAT": "text"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    access, = done.stdout.splitlines()
    assert access.endswith(" GET /d/[redacted] 200 12.3 ms 127.0.0.1") and "abc.DEF" not in done.stdout
    app_line = done.stderr.strip().splitlines()[-1]
    assert app_line.endswith("WARNING worker.run: job done  job_id=j1 correlation_id=c1")
    assert not app_line.startswith("{")


def test_an_admin_command_prints_its_answer_and_no_log_lines(tmp_path, migrated_database):
    import shutil
    (tmp_path / "instance").mkdir()
    shutil.copy(migrated_database, tmp_path / "instance" / "pdfqueue.db")  # what `flask db upgrade` makes
    env = {**__import__("os").environ, "DATA_DIR": str(tmp_path), "LOG_FORMAT": "json"}
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    done = subprocess.run([*flask, "users", "list"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert (done.stdout, done.stderr) == ("", "No accounts yet.\n")
    made = subprocess.run([*flask, "tokens", "create", "robot@example.com"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert made.returncode != 0 and "{" not in made.stderr  # a clear refusal, no JSON log lines around it


def test_the_first_run_link_is_a_banner_of_its_own_printed_at_start():
    from tests.support.stack import running_stack
    with running_stack(gateway_url="http://127.0.0.1:9", workers=0) as stack:  # nobody has asked for a page yet
        log = stack.log("web")
    banner = log[log.index("No account exists yet"):]
    link = banner.split("\n\n")[1].strip()
    assert link.startswith("http://127.0.0.1:") and "/setup/" in link
    lines_with_link = [line for line in log.splitlines() if link in line]
    assert lines_with_link == [f"  {link}"]  # not inside a JSON log line, and not in the access log
