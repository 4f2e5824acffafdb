"""Share links (POST/DELETE /api/jobs/<id>/share, GET /d/<token>): what a link carries, its expiry, revoking."""
import json
import time

import pytest
from itsdangerous import URLSafeSerializer

from tests.support.app import ApiClient, run, upload


@pytest.fixture
def shared_job(worker_app, api):
    job = upload(api, "shared")
    run(worker_app, job["id"])
    return job


def _claims(url):
    return URLSafeSerializer("unused").load_payload(url.rsplit("/", 1)[1].split(".")[0].encode())


def test_a_share_link_carries_the_job_and_its_nonce_not_the_owner(api, shared_job):
    url = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"]
    claims = _claims(url)
    assert set(claims) == {"j", "n", "e"} and claims["j"] == shared_job["id"]
    assert api.user.id not in json.dumps(claims)


def test_deleting_the_share_revokes_every_link_of_the_job(worker_app, api, shared_job):
    links = [api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"] for _ in range(2)]
    stranger = worker_app.test_client()
    assert [stranger.get(link).status_code for link in links] == [200, 200]
    assert api.delete(f"/api/jobs/{shared_job['id']}/share").status_code == 204
    assert [stranger.get(link).status_code for link in links] == [404, 404]
    fresh = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"]
    assert stranger.get(fresh).status_code == 200


def test_only_the_owner_revokes_a_jobs_links(worker_app, api, shared_job):
    other = ApiClient(worker_app.test_client())
    assert other.delete(f"/api/jobs/{shared_job['id']}/share").status_code == 404


def test_the_expiry_is_fixed_in_the_link_when_it_is_made(worker_app, api, shared_job):
    worker_app.config["SHARE_TTL_SECONDS"] = 1
    link = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()
    worker_app.config["SHARE_TTL_SECONDS"] = 3600  # a longer TTL set later does not lengthen a link given out
    time.sleep(1.2)
    expired = worker_app.test_client().get(link["url"])
    assert expired.status_code == 410 and expired.get_json()["error"]["code"] == "EXPIRED"


def test_a_disabled_users_share_links_answer_404_until_they_are_enabled(worker_app, api, shared_job):
    from core.accounts import User
    from core.db import db
    link = api.post(f"/api/jobs/{shared_job['id']}/share").get_json()["url"]
    anyone = worker_app.test_client()
    assert anyone.get(link).status_code == 200
    for disabled, status in ((True, 404), (False, 200)):
        with worker_app.app_context():
            db.session.get(User, api.user.id).change(disabled=disabled)
        answer = anyone.get(link)
        assert answer.status_code == status
    assert anyone.get(link).get_data(as_text=True).startswith("<")
