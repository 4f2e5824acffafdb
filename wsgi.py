"""Entry point for gunicorn (`wsgi:app`) and for the Huey consumer (`wsgi.huey`)."""
from webapp import create_app
from webapp.queue import huey  # noqa: F401  (the consumer is pointed here: it needs the app and the tasks)

app = create_app()
