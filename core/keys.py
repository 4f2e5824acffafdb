"""The app's secret key: SECRET_KEY checked (long enough, no placeholder), or one generated once into the instance
folder; older keys in SECRET_KEY_FALLBACKS checked too. Every process reads the same key (cookies, share links)."""
import os
import secrets
import tempfile
from pathlib import Path


MIN_SECRET_BYTES = 32
# Values that templates, tutorials and our own old example file put in SECRET_KEY: never a real key.
PLACEHOLDER_SECRETS = {"change-me", "changeme", "change_me", "secret", "secret-key", "secret_key", "secretkey",
                       "dev", "development", "test", "testing", "password", "replace-me", "your-secret-key",
                       "insecure", "default", "xxx", "todo"}


def check_secret(value, name="SECRET_KEY"):
    """Raise SystemExit, saying what to do, if value is a known placeholder or shorter than 32 bytes."""
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise SystemExit(f"{name} is the placeholder {value!r}: unset it (a key is generated into instance/secret_key) "
                         "or set one from: python3 -c 'import secrets; print(secrets.token_hex(32))'")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"{name} is {len(value.encode())} bytes long; it needs at least {MIN_SECRET_BYTES}: unset it "
                         "(a key is generated into instance/secret_key) or set one from: "
                         "python3 -c 'import secrets; print(secrets.token_hex(32))'")
    return value


def secret_key(instance_dir):
    """The key generated once into the instance folder (mode 0600), made so that racing processes read one key.

    The key is written whole to a temp file first and then hard-linked into place: link() fails if the name
    exists, so exactly one process's key wins and nobody can read a half-written file."""
    path = Path(instance_dir) / "secret_key"
    if not path.exists():
        fd, temp = tempfile.mkstemp(dir=instance_dir, prefix=".secret_key-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temp, path)
        except FileExistsError:
            pass  # another process won the race: its key is the one
        finally:
            os.unlink(temp)
    return check_secret(path.read_text().strip(), str(path))


def init_app(app):
    """Check SECRET_KEY and its fallbacks, or read (first making) the generated key."""
    config = app.config
    if config.get("SECRET_KEY"):
        check_secret(config["SECRET_KEY"])
    else:
        config["SECRET_KEY"] = secret_key(config["INSTANCE_DIR"])
    # Rotation: new cookies and links are signed with SECRET_KEY; those signed with an older key still check.
    for index, old in enumerate(config.get("SECRET_KEY_FALLBACKS") or ()):
        check_secret(old, f"SECRET_KEY_FALLBACKS[{index}]")
