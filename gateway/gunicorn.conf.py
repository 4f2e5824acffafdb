"""Gunicorn settings for the gateway: `gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app`."""

import multiprocessing
import os

from webapp import logs

bind = f"{os.environ.get('GATEWAY_HOST', '127.0.0.1')}:{os.environ.get('GATEWAY_PORT', '8002')}"
# Sync workers: single-threaded, so each can safely fork its parse children; the parse itself is CPU-bound
# and runs in that child, so one worker per core plus one keeps the cores busy while a worker waits on I/O.
worker_class = "sync"
workers = int(os.environ.get("GATEWAY_WORKERS", multiprocessing.cpu_count() + 1))
# A worker blocks for the whole parse, so gunicorn must not kill it before the parse's own wall-time cap.
timeout = int(os.environ.get("GATEWAY_PARSE_TIMEOUT_S", "30")) + 30
graceful_timeout = 10
preload_app = True  # load mappings and pypdfium2 once, before forking workers
accesslog = None  # the app logs one JSON line per request itself
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
logconfig_dict = logs.gunicorn_logconfig(loglevel.upper(), access=False)  # gunicorn's own lines in the one format
# Web and gateway gunicorns share a box; neither uses gunicorn 27's control socket (one path for all).
control_socket_disable = True
