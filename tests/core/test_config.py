"""The settings: one typed object (core/config.py, gateway/config.py), the READMEs' tables printed from it, and a bad
value refused at start with the variable's name."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import config
from gateway.config import GatewaySettings

REPO = Path(__file__).resolve().parents[2]


def generated(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "settings_table.py"), *args], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def block(readme):
    text = readme.read_text()
    return re.search(r"<!-- settings: [^\n]*-->\n(.*?)<!-- /settings -->", text, re.S).group(1)


def test_the_readmes_tables_are_the_typed_settings():
    assert block(REPO / "README.md") == generated()
    assert block(REPO / "gateway" / "README.md") == generated("--gateway")


def test_no_setting_is_read_outside_the_typed_settings():
    reads = re.compile(r"""os\.environ(?:\.get)?[\[(]\s*["'][A-Z_]+["']|os\.getenv\(""")
    offenders = [str(path.relative_to(REPO)) for part in ("core", "webapp", "worker", "gateway")
                 for path in (REPO / part).rglob("*.py") if reads.search(path.read_text())]
    offenders += [name for name in ("gunicorn.conf.py", "wsgi.py", "tasks.py") if reads.search((REPO / name).read_text())]
    assert offenders == []


def test_every_setting_has_a_meaning():
    for fields in (config.Settings.model_fields, GatewaySettings.model_fields):
        assert all(field.description for field in fields.values())


def test_the_environment_is_read_with_the_old_spellings(monkeypatch):
    monkeypatch.setenv("MAPPINGS", " generic_v1 , pt_simon_invoice_v1,")
    monkeypatch.setenv("RETENTION_XML_AFTER_DOWNLOAD", "yes-please")  # anything but '', 0 and false is on
    monkeypatch.setenv("BEHIND_PROXY", "false")
    monkeypatch.setenv("GATEWAY_PORT", "9100")
    monkeypatch.setenv("GATEWAY_TIMEOUT", "")  # empty is unset
    monkeypatch.setenv("PUBLIC_URL", "https://pdfq.example/")
    settings = config.read()
    assert settings.MAPPINGS == ["generic_v1", "pt_simon_invoice_v1"] and settings.DEFAULT_MAPPING == "generic_v1"
    assert settings.RETENTION_XML_AFTER_DOWNLOAD is True and settings.BEHIND_PROXY is False
    assert settings.GATEWAY_URL == "http://127.0.0.1:9100" and settings.GATEWAY_TIMEOUT == 180
    assert settings.PUBLIC_URL == "https://pdfq.example"
    assert Path(settings.DATA_DIR) == REPO


@pytest.mark.parametrize("name, value", [("PORT", "eighty"), ("GATEWAY_TIMEOUT", "soon"), ("MAX_ATTEMPTS", "3.5")])
def test_a_bad_value_stops_the_start_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=name):
        config.read()


def test_log_levels_are_read_in_any_case(monkeypatch):
    from gateway import config as gateway_config
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "info")  # as deploy/pdfqueue-gateway.env.example sets it
    assert config.read().LOG_LEVEL == "WARNING" and gateway_config.read().LOG_LEVEL == "INFO"
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit, match="LOG_LEVEL"):
        config.read()


def test_no_mapping_at_all_is_refused(monkeypatch):
    monkeypatch.setenv("MAPPINGS", " , ")
    with pytest.raises(SystemExit, match="MAPPINGS"):
        config.read()


def test_the_gateway_refuses_a_bad_value_too(monkeypatch):
    from gateway import config as gateway_config
    monkeypatch.setenv("GATEWAY_MAX_MB", "lots")
    with pytest.raises(SystemExit, match="GATEWAY_MAX_MB"):
        gateway_config.read()


def test_a_password_in_smtp_url_goes_only_over_tls_unless_the_server_is_on_this_machine(monkeypatch):
    for refused in ("smtp://user:s3cret@mail.example.com:25", "smtp://user:s3cret@10.0.0.5",
                    "smtp://user@mail.example.com", "smtp://user:s3cret@mail.example.com:587?starttls=maybe",
                    "smtps://mail.example.com?tls=off"):
        monkeypatch.setenv("SMTP_URL", refused)
        with pytest.raises(SystemExit, match="SMTP_URL") as caught:
            config.read()
        assert "s3cret" not in str(caught.value), refused
    assert "in clear to mail.example.com" in str(pytest.raises(SystemExit, config.read, {
        "SMTP_URL": "smtp://user:s3cret@mail.example.com:25"}).value)
    for taken in ("smtp://user:s3cret@127.0.0.1:25", "smtp://user:s3cret@localhost:1025", "smtp://user:s3cret@[::1]:25",
                  "smtps://user:s3cret@mail.example.com:465", "smtp://mail.example.com:25",
                  "smtp://user:s3cret@mail.example.com:587?starttls=required"):
        monkeypatch.setenv("SMTP_URL", taken)
        assert config.read().SMTP_URL == taken
