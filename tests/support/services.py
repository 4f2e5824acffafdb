"""Throwaway redis-server, PostgreSQL cluster and Dovecot IMAP server on loopback, in a temp dir, for the tests
that need them and by hand.

    python -m tests.support.services        # start both, print REDIS_URL and DATABASE_URL, Ctrl-C stops and removes them

As root, PostgreSQL runs as the `postgres` user the Debian package creates (it refuses to run as root).
"""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def unavailable(message):
    """Skip the test for want of something the machine lacks; under CI=true, where nothing may skip, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(binary, why):
    """The binary's path; under CI=true a missing one fails the test, elsewhere it skips it."""
    path = shutil.which(binary) or (binary if os.path.isabs(binary) and os.access(binary, os.X_OK) else None)
    if path is None:
        unavailable(f"{binary} is not installed ({why}); `make system-deps` installs it")
    return path


def postgres_bin():
    """The newest PostgreSQL server binaries directory (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name))
    return str(Path(require(found[-1] if found else "postgres", "PostgreSQL server")).parent)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port, process, deadline, name):
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} in time")


@contextmanager
def redis_server(workdir=None):
    """Run redis-server on a free loopback port, without persistence; yield its URL."""
    binary = require("redis-server", "Redis")
    port = free_port()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="redis-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", folder, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, process, time.monotonic() + 10, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _as_postgres(command):
    """Run command as the postgres user when we are root (PostgreSQL refuses root), else as ourselves."""
    if os.geteuid() == 0:
        return [require("runuser", "to run PostgreSQL as a non-root user"), "-u", "postgres", "--", *command]
    return command


@contextmanager
def postgres_cluster(database="pdfqueue"):
    """initdb a cluster in a temp dir, start it on a free loopback port (trust auth); yield a DATABASE_URL.

    The dir is made under the system temp dir, which the postgres user can reach (pytest's tmp_path it cannot)."""
    bindir = postgres_bin()
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="pdfqueue-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER") or "postgres"
    try:
        subprocess.run(_as_postgres([f"{bindir}/initdb", "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8",
                                     "--no-sync", "--no-instructions"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"),
                                     "-w", "-t", "30", "start"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            subprocess.run(_as_postgres([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, database]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(root, ignore_errors=True)


DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:{root}/mail/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


class Dovecot:
    """A Dovecot IMAP server on a loopback port with one user (user / password), its mail in a temp maildir; it can
    be stopped and started again on the same port (an outage). With tls, it also listens for imaps:// and offers
    STARTTLS, with a certificate for 127.0.0.1 signed by a throwaway CA (ca_file)."""

    USER, PASSWORD = "invoices", "a mailbox password"

    def __init__(self, root, tls=False):
        self.binary = require("/usr/sbin/dovecot", "Dovecot IMAP server (Debian's dovecot-imapd)")
        self.root = Path(root)
        self.port = free_port()
        self.imaps_port = free_port() if tls else 0
        self.ca_file = None
        self.process = None
        root_user = os.geteuid() == 0
        # As root, mail is kept as nobody (Dovecot runs no mail process as root); otherwise as ourselves.
        uid, gid = (65534, 65534) if root_user else (os.getuid(), os.getgid())
        me = os.environ.get("USER") or str(os.getuid())
        for sub in ("run", "state", "mail", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if root_user:
            for sub in ("mail", "home"):
                os.chown(self.root / sub, uid, gid)
        (self.root / "passwd").write_text(f"{self.USER}:{{PLAIN}}{self.PASSWORD}::::::\n")
        self.conf = self.root / "dovecot.conf"
        ssl = "ssl = no"
        if tls:
            self.ca_file, cert, key = _throwaway_certificate(self.root)
            ssl = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"
        self.conf.write_text(DOVECOT_CONF.format(
            root=self.root, port=self.port, imaps_port=self.imaps_port, ssl=ssl, uid=uid, gid=gid,
            internal="dovecot" if root_user else me, login="dovenull" if root_user else me))

    def url(self, mailbox="INBOX"):
        return f"imap://{self.USER}@127.0.0.1:{self.port}/{mailbox}"

    def start(self):
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        try:
            _wait_port(self.port, self.process, time.monotonic() + 15, "dovecot")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.log()[-2000:]}") from None
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    def log(self):
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def mailbox(self):
        """An imap-tools connection as the user (APPEND and look), logged in; close it with logout()."""
        from imap_tools import MailBoxUnencrypted
        return MailBoxUnencrypted("127.0.0.1", self.port).login(self.USER, self.PASSWORD)


def _throwaway_certificate(folder):
    """(CA file, certificate file, key file): a CA made now and a certificate for 127.0.0.1 it signed."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pdfqueue tests CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = Path(folder)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@contextmanager
def dovecot_server(workdir=None, tls=False):
    """Run Dovecot on a free loopback port in a temp dir (with tls, also imaps:// and STARTTLS); yield the
    Dovecot."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="dovecot-") as folder:
        os.chmod(folder, 0o755)  # its login processes run as another user and must reach the run dir
        server = Dovecot(folder, tls=tls).start()
        try:
            yield server
        finally:
            server.stop()


if __name__ == "__main__":
    with redis_server() as redis_url, postgres_cluster() as database_url:
        print(f"REDIS_URL={redis_url}\nDATABASE_URL={database_url}\n(Ctrl-C stops both)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
