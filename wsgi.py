"""Entry point for gunicorn (`wsgi:app`) and for `flask --app wsgi` (migrations, admin commands)."""
from webapp import create_app

app = create_app()
