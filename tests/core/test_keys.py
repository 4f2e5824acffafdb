"""The secret key (core/keys.py): placeholders and short keys refused, one key for racing first boots, rotation."""
import multiprocessing
import re
from pathlib import Path

import pytest

from tests.support.app import ApiClient, run, upload
from webapp import create_app


ROOT = Path(__file__).resolve().parents[2]


KEY = "test-secret-key-0123456789abcdefghijklmnop"


OLD_KEY = "an-older-secret-key-0123456789abcdefghijkl"


@pytest.mark.parametrize("key", ["change-me", "secret", "CHANGE-ME", "short-but-not-a-placeholder"])
def test_a_placeholder_or_short_secret_key_refuses_to_start(tmp_path, key):
    with pytest.raises(SystemExit) as refused:
        create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": key, "HUEY_MEMORY": True})
    assert "SECRET_KEY" in str(refused.value) and "token_hex" in str(refused.value)


def test_a_short_fallback_key_refuses_to_start(tmp_path):
    with pytest.raises(SystemExit, match="SECRET_KEY_FALLBACKS"):
        create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": KEY, "SECRET_KEY_FALLBACKS": ["x"],
                    "HUEY_MEMORY": True})


def test_the_shipped_env_file_sets_no_secret_and_the_readme_puts_none_on_a_command_line():
    example = (ROOT / "deploy" / "pdfqueue.env.example").read_text()
    assert not re.search(r"^\s*SECRET_KEY\s*=\s*\S", example, re.M)
    readme = (ROOT / "README.md").read_text()
    assert "xargs" not in readme and "set -a" in readme


def _read_key(instance_dir, start, queue):
    from core.keys import secret_key
    start.wait()
    try:
        queue.put(secret_key(instance_dir))
    except BaseException as exc:  # noqa: BLE001 - the parent reports what went wrong
        queue.put(repr(exc))


def test_processes_racing_at_first_boot_read_one_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(15):
        instance = tmp_path / f"instance-{attempt}"
        instance.mkdir()
        start, queue = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_read_key, args=(str(instance), start, queue)) for _ in range(4)]
        for proc in procs:
            proc.start()
        start.set()
        keys = [queue.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join()
        assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
        assert (instance / "secret_key").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in instance.iterdir()] == ["secret_key"]  # no temp file left behind


def test_rotation_keeps_old_sessions_and_share_links_working(make_app, fake):
    old = make_app(SECRET_KEY=OLD_KEY, GATEWAY_URL=fake.url)
    api = ApiClient(old.test_client())
    job = upload(api)
    run(old, job["id"])
    link = api.post(f"/api/jobs/{job['id']}/share").get_json()["url"]
    cookie = api.raw.get_cookie(old.config["SESSION_COOKIE_NAME"]).value
    rotated = make_app(SECRET_KEY=KEY, SECRET_KEY_FALLBACKS=[OLD_KEY], GATEWAY_URL=fake.url)
    browser = rotated.test_client()
    browser.set_cookie(rotated.config["SESSION_COOKIE_NAME"], cookie)
    assert browser.get("/api/session").get_json()["user"]["id"] == api.user.id
    assert rotated.test_client().get(link).status_code == 200
    dropped = make_app(SECRET_KEY=KEY, GATEWAY_URL=fake.url)  # the old key retired: its links are dead
    assert dropped.test_client().get(link).status_code == 404
