"""`gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app`"""

from gateway import create_app

app = create_app()
