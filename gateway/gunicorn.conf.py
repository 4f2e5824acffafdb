"""Gunicorn settings for the gateway: `gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app`."""

from gunicorn.glogging import Logger

from gateway import logs
from gateway.config import read as read_settings

settings = read_settings()  # the same typed settings the app reads (gateway/config.py)
bind = f"{settings.HOST}:{settings.PORT}"
# gevent workers: one OS thread each, so each can safely fork its parse children, and a greenlet per request,
# so a worker whose parse slots are all taken by slow files (bombs, each in its child until its limits stop it)
# still answers /healthz at once, and a few bombs never look like a dead gateway to the web app's breaker.
# The parse is CPU-bound and runs in the child: one worker per core plus one, each parsing
# GATEWAY_PARSES_PER_WORKER (1) file at a time, keeps the cores busy.
worker_class = settings.WORKER_CLASS
worker_connections = settings.CONNECTIONS
workers = settings.WORKERS
# A worker blocks for the whole parse, so gunicorn must not kill it before the parse's own wall-time cap.
timeout = settings.PARSE_TIMEOUT_S + 30
graceful_timeout = 10
preload_app = True  # load mappings and pypdfium2 once, before forking workers
accesslog = None  # the app logs one JSON line per request itself
loglevel = settings.LOG_LEVEL.lower()
logconfig_dict = logs.gunicorn_logconfig(loglevel.upper(), settings.LOG_FORMAT)  # gunicorn's own lines in the one format


class GatewayLogger(Logger):
    """gunicorn's logger without access lines: the app writes one per request itself (gateway/logs.py). With a
    logconfig_dict gunicorn would otherwise build each request's line (its atoms) for a logger nothing prints."""

    def access(self, resp, req, environ, request_time):
        pass


logger_class = GatewayLogger

# Web and gateway gunicorns share a box; neither uses gunicorn 27's control socket (one path for all).
control_socket_disable = True


def post_worker_init(worker):
    """Start this worker's parse zygote as the worker boots, so the first request does not wait for it."""
    worker.wsgi.extensions["gateway.zygote"].start()
