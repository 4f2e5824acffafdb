"""Security headers on every response, no CORS, ProxyFix behind one trusted reverse proxy, a body read deadline."""
from werkzeug.middleware.proxy_fix import ProxyFix

# Scripts and styles come only from our own static files: no inline script, no eval, no framing. The review
# page's pdf.js runs its parser in a module worker of our own origin (worker-src), and needs no eval.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "worker-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

# A PDF opened on its own is shown by the browser's viewer in a page it makes up around an <embed>, which the pages'
# object-src 'none' and style-src 'self' would blank (Chrome). This answer is a PDF (nosniff), never our HTML.
PDF_DOCUMENT_POLICY = "; ".join([
    "default-src 'none'",
    "object-src 'self'",
    "style-src 'unsafe-inline'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Pages are for one browser's session and its cookie: never let another origin read them (no CORS).
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
                "Access-Control-Allow-Methods", "Access-Control-Allow-Headers", "Access-Control-Expose-Headers")


def add_headers(response):
    """Set the security headers (a view may have set a stricter one of its own)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    for name in CORS_HEADERS:
        response.headers.pop(name, None)
    return response


def init_app(app):
    """Add the headers to every response; trust X-Forwarded-* from one proxy when BEHIND_PROXY is set."""
    if app.config.get("BEHIND_PROXY"):
        # The client address (rate limits), scheme (Secure cookies, URLs) and host come from the proxy.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
        # The proxy terminates TLS; Flask's own default (False) would otherwise win over a setdefault.
        app.config["SESSION_COOKIE_SECURE"] = True
        # Over HTTPS Flask-WTF also wants a same-origin Referer, which scripts (curl) do not send. The token
        # travels in a custom header that no other origin can set without a CORS preflight we never grant.
        app.config["WTF_CSRF_SSL_STRICT"] = False
    app.after_request(add_headers)
    from .bodies import BodyDeadline
    app.wsgi_app = BodyDeadline(app.wsgi_app, app.config["BODY_TIMEOUT_SECONDS"])
