"""Admin commands: `flask --app wsgi users|tokens|jobs|breaker|sources ...`, `cleanup`, `backup DEST` and `restore SRC`.

They act on any owner's jobs and accounts (an operator's view), through the same model transitions the API uses.
A password comes from a prompt, or from PDFQUEUE_PASSWORD for scripts.
"""
import json

import click
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select


from core import backup as backup_module
from core import config
from core import breaker_state as breaker_module
from core import sources as sources_module
from core.accounts import AccountError, ApiToken, User
from core.intake import runner as intake
from core.operations import apply_retention, delete_with_files, retry_failed, wake_due
from core.clock import isoformat
from core.db import db
from core.errors import ApiError
from core.coordination import Coordination
from core.jobs.model import Job
from core.jobs.states import Status

jobs = AppGroup("jobs", help="List, show, retry and delete jobs of every owner.")
# Ids made before new_id() skipped a leading "-" still look like options; an unknown option is taken as the id.
TAKES_ANY_ID = {"ignore_unknown_options": True}
breaker = AppGroup("breaker", help="Show or reset the gateway circuit breaker.")
users = AppGroup("users", help="Create, list, disable, enable and reset accounts.")
tokens = AppGroup("tokens", help="Make personal API tokens (for provisioning scripts).")
sources = AppGroup("sources", help="Mailboxes and folders whose PDFs become jobs: add, list, poll, disable, enable, "
                   "remove.")


def _password(prompt="Password"):
    """PDFQUEUE_PASSWORD if set (scripts; read when the command runs), else asked twice without echo."""
    return config.read().PDFQUEUE_PASSWORD or click.prompt(prompt, hide_input=True, confirmation_prompt=True)


def _user_or_exit(email):
    user = User.by_email(email)
    if user is None:
        raise click.ClickException(f"no account for {email}")
    return user


@users.command("create")
@click.argument("email")
@click.option("--admin", is_flag=True, help="May see and act on everyone's jobs and accounts.")
def users_create(email, admin):
    """Create an account with a password (the first admin, say)."""
    try:
        user = User.create(email, _password(), admin=admin)
    except AccountError as error:
        raise click.ClickException(str(error))
    click.echo(f"{user.email} created{' (admin)' if admin else ''}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def users_list(as_json):
    """List every account."""
    users = db.session.execute(select(User).order_by(User.email)).scalars().all()
    if not users and not as_json:
        click.echo("No accounts yet.", err=True)  # on stderr: a script reading stdout sees no account lines
    for user in users:
        if as_json:
            click.echo(json.dumps(user.to_admin_dict()))
        else:
            flags = " ".join(flag for flag, on in (("admin", user.admin), ("disabled", user.disabled)) if on)
            click.echo(f"{user.email}  {flags or 'member'}  last sign-in {isoformat(user.signed_in_at) or 'never'}")


@users.command("disable")
@click.argument("email")
def users_disable(email):
    """Disable an account: every session and token of it stops working at once."""
    _user_or_exit(email).change(disabled=True)
    click.echo(f"{email} disabled")


@users.command("enable")
@click.argument("email")
def users_enable(email):
    """Enable a disabled account again."""
    _user_or_exit(email).change(disabled=False)
    click.echo(f"{email} enabled")


@users.command("reset")
@click.argument("email")
def users_reset(email):
    """Set a new password for an account, signing it out everywhere and revoking its API tokens."""
    user = _user_or_exit(email)
    try:
        user.set_password(_password("New password"), revoke_tokens=True)
    except AccountError as error:
        raise click.ClickException(str(error))
    click.echo(f"{email}: password set; every session of it has ended and its API tokens are revoked")


@tokens.command("create")
@click.argument("email")
@click.option("--name", default="provisioned", show_default=True, help="What the token is for.")
def tokens_create(email, name):
    """Make a personal API token for an account; the token alone is the last line printed."""
    try:
        _token, secret = ApiToken.create(_user_or_exit(email), name)
    except AccountError as error:
        raise click.ClickException(str(error))
    click.echo(f"token {name!r} for {email}; it is shown once:")
    click.echo(secret)


def _job_or_exit(job_id):
    job = db.session.get(Job, job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    return job


@jobs.command("list")
@click.option("--status", type=click.Choice([status.value for status in Status]), help="Only jobs in this state.")
@click.option("--owner", help="Only this owner's jobs.")
@click.option("--limit", default=50, show_default=True, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def jobs_list(status, owner, limit, as_json):
    """List jobs, newest first."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    if owner:
        query = query.where(Job.owner == owner)
    for job in db.session.execute(query).scalars():
        if as_json:
            click.echo(json.dumps({**job.to_dict(), "owner": job.owner}))
        else:
            code = f" {job.error_code}" if job.error_code else ""
            click.echo(f"{job.id}  {job.status:<10} {isoformat(job.created_at)}  attempts={job.attempts}"
                       f"{code}  {job.filename}")


@jobs.command("show", context_settings=TAKES_ANY_ID)
@click.argument("job_id")
def jobs_show(job_id):
    """Show one job in full, as JSON."""
    job = _job_or_exit(job_id)
    detail = {**job.to_dict(), "owner": job.owner, "upload_path": job.upload_path, "result_path": job.result_path,
              "leased_by": job.leased_by, "lease_expires_at": isoformat(job.lease_expires_at),
              "next_attempt_at": isoformat(job.next_attempt_at)}
    click.echo(json.dumps(detail, indent=2))


@jobs.command("retry", context_settings=TAKES_ANY_ID)
@click.argument("job_id")
def jobs_retry(job_id):
    """Queue a failed job again from its kept PDF."""
    try:
        retry_failed(_job_or_exit(job_id))
    except ApiError as error:
        raise click.ClickException(f"job {job_id}: {error.message}")
    click.echo(f"job {job_id} queued again")


@jobs.command("delete", context_settings=TAKES_ANY_ID)
@click.argument("job_id")
@click.confirmation_option(prompt="Delete the job and its files?")
def jobs_delete(job_id):
    """Delete a job and its files."""
    delete_with_files(_job_or_exit(job_id))
    click.echo(f"job {job_id} deleted")


@click.command("cleanup")
@with_appcontext
def cleanup():
    """Apply retention now: delete PDFs and results past their time, and stray partial files."""
    removed = apply_retention()
    click.echo(f"removed {removed['pdf']} PDFs, {removed['xml']} results, {removed['partial']} partial files")


@click.command("backup")
@click.argument("dest", type=click.Path(file_okay=False))
@with_appcontext
def backup(dest):
    """Copy the database, uploads/, results/ and the generated secret key into the new directory DEST.

    Safe while the service runs (SQLite's online backup API; pg_dump for PostgreSQL). DEST is the owner's alone
    (0700, its files 0600): it holds password hashes and webhook secrets."""
    try:
        manifest = backup_module.backup(dest)
    except backup_module.BackupError as error:
        raise click.ClickException(str(error))
    files = manifest["files"]
    click.echo(f"backed up {manifest['jobs']} jobs ({manifest['database']}), {files['uploads']} PDFs and "
               f"{files['results']} results into {dest}")
    if manifest["missing"]:
        click.echo(f"{len(manifest['missing'])} files were deleted while the backup ran (retention or a deleted job): "
                   + ", ".join(manifest["missing"][:10]), err=True)


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Restore even though the service looks running.")
@click.confirmation_option(prompt="Replace this installation's database and files with the backup?")
@with_appcontext
def restore(src, force):
    """Replace the database, uploads/, results/ (and the generated secret key) with the backup in SRC.

    Stop web and worker first: a current worker heartbeat or a web process answering refuses it (--force).
    Everything is copied and checked beside what it replaces, then swapped in: a backup holding a symlink or a job
    path outside DATA_DIR, or a restore that fails midway, leaves the installation as it was."""
    try:
        manifest = backup_module.restore(src, force=force)
    except backup_module.BackupError as error:
        raise click.ClickException(str(error))
    click.echo(f"restored {manifest['jobs']} jobs from the backup of {manifest['created_at']}; "
               "run `flask --app wsgi db upgrade` if this release is newer, then start the service")


@breaker.command("status")
def breaker_status():
    """Show whether the breaker is open, its failure count and next probe."""
    row = Coordination.get(breaker_module.NAME)
    click.echo(json.dumps({"state": breaker_module.state(), "failures": (row.count or 0) if row else 0,
                           "next_probe_at": isoformat(row.due_at) if row else None}))


@breaker.command("reset")
def breaker_reset():
    """Close the breaker now and wake the jobs it held."""
    breaker_module.reset()
    click.echo(f"breaker closed; {wake_due()} queued jobs woken")


@sources.command("add")
@click.argument("url")
@click.option("--owner", required=True, help="Email of the account whose queue the source's jobs join.")
@click.option("--mapping", help="The mapping of its jobs (default: DEFAULT_MAPPING).")
@click.option("--from", "senders", multiple=True, metavar="ADDR",
              help="Take mail only from this sender (repeat for more); without it, from anyone.")
def sources_add(url, owner, mapping, senders):
    """Add a source: imap://USER@HOST:PORT/MAILBOX (STARTTLS), imaps://… (TLS) or folder:///ABSOLUTE/PATH.

    A mailbox's password comes from PDFQUEUE_SOURCE_PASSWORD, else a prompt; it is kept encrypted."""
    try:
        kind, _parts = sources_module.parse_url(url)
        password = None
        if kind == sources_module.IMAP:
            password = config.read().PDFQUEUE_SOURCE_PASSWORD or click.prompt("Password of the mailbox",
                                                                              hide_input=True)
        source = sources_module.create(url, owner, mapping, senders, password)
    except sources_module.SourceError as error:
        raise click.ClickException(str(error))
    click.echo(f"source {source.id} added: {source.url} into the queue of {owner.strip().lower()} "
               f"(mapping {source.mapping})")


@sources.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def sources_list(as_json):
    """List the sources, how their polls went and what they took."""
    listed = sources_module.Source.listed()
    if not listed:
        click.echo("No sources yet.", err=True)
    emails = dict(db.session.execute(select(User.id, User.email)).all())
    for source in listed:
        if as_json:
            click.echo(json.dumps({**source.to_dict(), "owner_email": emails.get(source.owner)}))
        else:
            state = "on" if source.enabled else "off"
            click.echo(f"{source.id}  {state:<3}  {source.url}  → {emails.get(source.owner, source.owner)}  "
                       f"last poll {isoformat(source.last_poll_at) or 'never'}  taken {source.files_taken}  "
                       f"rejected {source.files_rejected}  errors {source.errors}"
                       + (f"  last error: {source.last_error}" if source.last_error else ""))


@sources.command("poll")
@click.argument("source_id", required=False, type=int)
def sources_poll(source_id):
    """Poll one source (even one that is off), or every enabled one, once, now, in the foreground; print what it
    took. Exits 1 if a poll failed."""
    if source_id is not None:
        if db.session.get(sources_module.Source, source_id) is None:
            raise click.ClickException(f"no source {source_id}")
        ids = [source_id]
    else:
        ids = [source.id for source in sources_module.Source.listed() if source.enabled]
    failed = False
    for one in ids:
        run = intake.poll(one, anytime=True, even_off=source_id is not None)
        if run is None:
            click.echo(f"source {one}: a poll of it is under way elsewhere; nothing done")
            continue
        for name, job_id, outcome in run.taken:
            click.echo(f"source {one}: took {name} (job {job_id}, {outcome})")
        for name, reason in run.rejected:
            click.echo(f"source {one}: rejected {name}: {reason}")
        if run.error:
            failed = True
            click.echo(f"source {one}: failed: {run.error}", err=True)
        elif not run.taken and not run.rejected:
            click.echo(f"source {one}: nothing new")
    if failed:
        raise SystemExit(1)


def _switch(source_id, enabled):
    if not sources_module.Source.set_enabled(source_id, enabled):
        raise click.ClickException(f"no source {source_id}")
    click.echo(f"source {source_id} {'enabled' if enabled else 'disabled'}")


@sources.command("disable")
@click.argument("source_id", type=int)
def sources_disable(source_id):
    """Stop polling a source (what it holds waits there)."""
    _switch(source_id, False)


@sources.command("enable")
@click.argument("source_id", type=int)
def sources_enable(source_id):
    """Poll a source again, at once."""
    _switch(source_id, True)


@sources.command("remove")
@click.argument("source_id", type=int)
def sources_remove(source_id):
    """Delete a source (its jobs stay)."""
    if not sources_module.Source.remove(source_id):
        raise click.ClickException(f"no source {source_id}")
    click.echo(f"source {source_id} removed")


def init_app(app):
    """Register the admin commands on `flask`."""
    for command in (users, tokens, jobs, breaker, sources, cleanup, backup, restore):
        app.cli.add_command(command)
