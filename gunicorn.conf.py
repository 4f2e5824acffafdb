"""gunicorn settings for the web process (`gunicorn -c gunicorn.conf.py wsgi:app`).

The worker class is gevent: every open dashboard holds a Server-Sent Events stream for as long as it is
open, and gthread spends one of its WEB_THREADS on each, so 32 dashboards would starve every other request.
A gevent worker holds each stream as a greenlet (bench/bench_sse.py: 500 streams, see README "Serving").
The web process's blocking libraries are gevent-safe under the worker's monkey-patching: sockets
(requests, redis) and threads (the event hub's poll) are patched, psycopg 3 picks its green wait by itself, and
SQLite calls are short local reads and writes. WEB_WORKER_CLASS=gthread switches back.
"""
import resource
import sys

from core import logs
from core.config import read as read_settings

settings = read_settings()  # the same typed settings the app reads (core/config.py)
bind = [f"{settings.HOST}:{settings.PORT}"]
if settings.METRICS_PORT:
    # Prometheus' own listener: it serves /metrics (without METRICS_TOKEN) and nothing else (webapp/metrics.py).
    bind.append(f"{settings.METRICS_HOST}:{settings.METRICS_PORT}")
workers = settings.WEB_WORKERS
if workers > 1 and not settings.REDIS_URL:
    # Flask-Limiter's memory storage is per process: several processes would each allow the full limit.
    raise SystemExit("WEB_WORKERS > 1 needs REDIS_URL (the upload limit must be shared)")
worker_class = settings.WEB_WORKER_CLASS
worker_connections = settings.WEB_CONNECTIONS  # gevent: open streams + requests
threads = settings.WEB_THREADS  # gthread only
timeout = 120
graceful_timeout = 20
keepalive = 5
accesslog = "-"
# Unused, and its default path ($HOME/.gunicorn/gunicorn.ctl) is one per user: a second gunicorn on the box
# (another web process, the gateway) would take it over.
control_socket_disable = True


def on_starting(server):
    """Each open stream is a socket: let the process have as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = worker_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


# gunicorn's own lines (start-up, worker exits, the access log) in the app's one JSON format; the app's loggers add
# their handler to the root logger when it loads (core/logs.py).
logconfig_dict = logs.gunicorn_logconfig(settings.LOG_LEVEL, log_format=settings.LOG_FORMAT)


def post_worker_init(worker):
    """While nobody has an account, print the one-time link that creates the first admin as a banner of its own
    on stderr, once, at start (by the first worker): not a log line, and never in the access log."""
    app = worker.wsgi
    if worker.age != 1 or app.config.get("AUTH") != "password":
        return
    from webapp.auth import setup_banner, setup_link
    link = setup_link(app)
    if link:
        sys.stderr.write(setup_banner(link))
        sys.stderr.flush()
