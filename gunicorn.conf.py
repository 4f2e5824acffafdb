"""gunicorn settings for the web process (`gunicorn -c gunicorn.conf.py wsgi:app`)."""
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_WORKERS", 1))
if workers > 1 and not os.environ.get("REDIS_URL"):
    # Flask-Limiter's memory storage is per process: several processes would each allow the full limit.
    raise SystemExit("WEB_WORKERS > 1 needs REDIS_URL (the upload limit must be shared)")
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", 32))
timeout = 120
graceful_timeout = 20
keepalive = 5
accesslog = "-"
