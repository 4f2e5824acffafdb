"""Gunicorn settings for the gateway: `gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app`."""

import multiprocessing
import os

from gateway import logs

bind = f"{os.environ.get('GATEWAY_HOST', '127.0.0.1')}:{os.environ.get('GATEWAY_PORT', '8002')}"
# gevent workers: one OS thread each, so each can safely fork its parse children, and a greenlet per request,
# so a worker whose parse slots are all taken by slow files (bombs, each in its child until its limits stop it)
# still answers /healthz at once, and a few bombs never look like a dead gateway to the web app's breaker.
# The parse is CPU-bound and runs in the child: one worker per core plus one, each parsing
# GATEWAY_PARSES_PER_WORKER (1) file at a time, keeps the cores busy.
worker_class = os.environ.get("GATEWAY_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("GATEWAY_CONNECTIONS", 100))
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count() + 1))
# A worker blocks for the whole parse, so gunicorn must not kill it before the parse's own wall-time cap.
timeout = int(os.environ.get("GATEWAY_PARSE_TIMEOUT_S", "30")) + 30
graceful_timeout = 10
preload_app = True  # load mappings and pypdfium2 once, before forking workers
accesslog = None  # the app logs one JSON line per request itself
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
logconfig_dict = logs.gunicorn_logconfig(loglevel.upper())  # gunicorn's own lines in the one format
# Web and gateway gunicorns share a box; neither uses gunicorn 27's control socket (one path for all).
control_socket_disable = True
