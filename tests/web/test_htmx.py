"""The htmx helper: header names, request detection, HX-Trigger merging."""
import json

import pytest
from flask import Flask, make_response

from webapp import htmx


@pytest.fixture
def flask_app():
    return Flask(__name__)


def test_header_names_are_htmx_own_spelling():
    assert (htmx.HX_REQUEST, htmx.HX_TRIGGER, htmx.HX_TARGET, htmx.HX_BOOSTED) == \
        ("HX-Request", "HX-Trigger", "HX-Target", "HX-Boosted")
    assert (htmx.HX_REDIRECT, htmx.HX_RESWAP, htmx.HX_RETARGET, htmx.HX_PUSH_URL) == \
        ("HX-Redirect", "HX-Reswap", "HX-Retarget", "HX-Push-Url")
    assert htmx.HX_TRIGGER_AFTER_SWAP == "HX-Trigger-After-Swap" and htmx.STOP_POLLING == 286


@pytest.mark.parametrize("headers, expected", [
    ({}, False),
    ({"HX-Request": "true"}, True),
    ({"HX-Request": "false"}, False),
    ({"HX-Request": "true", "HX-History-Restore-Request": "true"}, False),  # wants the whole page
])
def test_is_htmx(flask_app, headers, expected):
    with flask_app.test_request_context("/", headers=headers):
        assert htmx.is_htmx() is expected


def test_trigger_sets_json_and_merges(flask_app):
    with flask_app.test_request_context("/"):
        response = make_response("")
        htmx.trigger(response, "refresh")
        htmx.trigger(response, {"queue:polled": {"active": 2}})
        assert json.loads(response.headers[htmx.HX_TRIGGER]) == {"refresh": None, "queue:polled": {"active": 2}}


def test_trigger_keeps_a_plain_event_list_already_set(flask_app):
    with flask_app.test_request_context("/"):
        response = make_response("")
        response.headers[htmx.HX_TRIGGER] = "a, b"
        htmx.trigger(response, {"c": 1}, header=htmx.HX_TRIGGER)
        assert json.loads(response.headers[htmx.HX_TRIGGER]) == {"a": None, "b": None, "c": 1}


def test_redirect(flask_app):
    with flask_app.test_request_context("/"):
        response = htmx.redirect(make_response(""), "/queue")
        assert response.headers[htmx.HX_REDIRECT] == "/queue"
