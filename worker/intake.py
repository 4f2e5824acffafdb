"""Intake in the worker: the process that leads upkeep (the maintenance lease, worker/upkeep.py) also polls the
sources that are due (core/intake/) and watches every folder source with watchfiles, polling a folder as soon as
something in it changes, and holds an IMAP IDLE on each mailbox whose server offers it, polling the mailbox as soon as
the server says a message arrived (Idler). Polls run on a small pool so that a slow mailbox holds up no other source; each takes its
source's lease first (core/sources.py), so a poll never starts while the source's previous one still runs, in this
process or in another that led before."""
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import watchfiles
from sqlalchemy import select

from core.coordination import Coordination
from core.clock import utcnow
from core.db import db
from core.backoff import backoff
from core.intake import imap, runner
from core.sources import FOLDER, IMAP, Source, parse_url, unseal
from worker.leases import PROCESS_ID
from worker.upkeep import MAINTENANCE

logger = logging.getLogger("pdfqueue.intake")

TICK_SECONDS = 1.0  # how often due sources are looked for (and the folder watch given a chance to end)
POLLERS = 2  # polls at a time in this process
IDLE_SECONDS = 60  # an IDLE is ended and begun again this often (servers drop one after 30 minutes at the least)


class Intake(threading.Thread):
    """While this process leads upkeep: poll due sources, and watch folder sources to poll them at once."""

    def __init__(self, app):
        super().__init__(name="intake", daemon=True)
        self.app = app
        self.stopped = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=POLLERS, thread_name_prefix="intake-poll")
        self.in_flight = set()  # source ids this process is polling now
        self.lock = threading.Lock()
        self.idlers = {}  # source id -> Idler, for each enabled mailbox while this process leads

    def run(self):
        while not self.stopped.is_set():
            try:
                leads, enabled = self._look()
                self._keep_idlers(enabled)
                folders = self._folders(enabled)
                if folders:
                    self._watch(folders)
                else:
                    if enabled:
                        self.tick()
                    self.stopped.wait(TICK_SECONDS)
            except Exception:  # intake must outlive a bad tick (database restarting, say); the next one retries
                logger.exception("intake tick failed")
                self.stopped.wait(TICK_SECONDS)
        self._keep_idlers([])
        self.pool.shutdown(wait=True, cancel_futures=True)

    def stop(self):
        self.stopped.set()

    def _look(self):
        """(whether this process leads upkeep, and if it does the enabled sources as (id, kind, URL parts))."""
        with self.app.app_context():
            try:
                row = Coordination.get(MAINTENANCE)
                if row is None or row.holder != PROCESS_ID or row.lease_expires_at <= utcnow():
                    return False, []
                rows = db.session.execute(select(Source.id, Source.kind, Source.url)
                                          .where(Source.enabled.is_(True)).order_by(Source.id)).all()
                return True, [(source_id, kind, parse_url(url)[1]) for source_id, kind, url in rows]
            finally:
                db.session.remove()

    def _keep_idlers(self, enabled):
        """One Idler per enabled mailbox (while this process leads: enabled is empty otherwise)."""
        wanted = {source_id for source_id, kind, _ in enabled if kind == IMAP}
        for source_id in set(self.idlers) - wanted:
            self.idlers.pop(source_id).stopped.set()
        for source_id in wanted - set(self.idlers):
            self.idlers[source_id] = Idler(self, source_id)
            self.idlers[source_id].start()

    @staticmethod
    def _folders(enabled):
        """{source id: folder} of the enabled folder sources whose folder exists."""
        return {source_id: parts["path"] for source_id, kind, parts in enabled
                if kind == FOLDER and os.path.isdir(parts["path"])}

    def _watch(self, folders):
        """Watch the folders, polling each that changes, and the due sources at each tick, until the set of folder
        sources changes, this process stops leading, or it stops."""
        by_path = {os.path.realpath(path): source_id for source_id, path in folders.items()}
        self.tick()
        for changes in watchfiles.watch(*folders.values(), stop_event=self.stopped, yield_on_timeout=True,
                                        rust_timeout=int(TICK_SECONDS * 1000), recursive=False, debounce=200,
                                        raise_interrupt=False):
            changed = {by_path[parent] for _, path in changes
                       if (parent := os.path.dirname(os.path.realpath(path))) in by_path}
            self.tick(changed)
            leads, enabled = self._look()
            self._keep_idlers(enabled)
            if not leads or self._folders(enabled) != folders:
                return

    def tick(self, changed=()):
        """Start a poll of each due source, and of each changed folder at once, unless this process polls it now."""
        with self.app.app_context():
            try:
                due = set(Source.due_ids()) | set(changed)
            finally:
                db.session.remove()
        for source_id in sorted(due):
            with self.lock:
                if source_id in self.in_flight:
                    continue
                self.in_flight.add(source_id)
            self.pool.submit(self._poll, source_id, source_id in changed)

    def _poll(self, source_id, anytime):
        try:
            with self.app.app_context():
                try:
                    runner.poll(source_id, anytime=anytime)
                finally:
                    db.session.remove()
        except Exception:  # a poll records its own failures; this is one that could not even do that
            logger.exception("poll of source %s failed", source_id)
        finally:
            with self.lock:
                self.in_flight.discard(source_id)


class Idler(threading.Thread):
    """Hold an IMAP IDLE on one mailbox source and have it polled as soon as the server says a message arrived
    (EXISTS). Where the server offers no IDLE, or the connection fails, the regular polls carry on alone; a failing
    IDLE waits longer each time before it tries again."""

    def __init__(self, intake, source_id):
        super().__init__(name=f"intake-idle-{source_id}", daemon=True)
        self.intake, self.source_id = intake, source_id
        self.stopped = threading.Event()
        self.idling = threading.Event()  # set once its IDLE is under way

    def run(self):
        failures = 0
        app = self.intake.app
        while not self.stopped.is_set():
            try:
                with app.app_context():
                    try:
                        source = db.session.get(Source, self.source_id)
                        if source is None:
                            return
                        parts, password = source.parts, unseal(source.secret)
                        timeout = app.config["INTAKE_TIMEOUT"]
                    finally:
                        db.session.remove()
                with imap.connect(parts, timeout) as mailbox:
                    mailbox.login(parts["user"], password, initial_folder=parts["mailbox"])
                    if "IDLE" not in mailbox.client.capabilities:
                        logger.info("source %s: the server offers no IDLE; polling only", self.source_id)
                        return
                    failures = 0
                    self.intake.tick({self.source_id})  # what arrived since the last poll, before the IDLE began
                    self.idling.set()
                    while not self.stopped.is_set():
                        if any(b"EXISTS" in line for line in mailbox.idle.wait(timeout=IDLE_SECONDS)):
                            self.intake.tick({self.source_id})
            except Exception as exc:  # swallowed on purpose: the polls record the mailbox's failures on the source
                self.idling.clear()
                failures += 1
                logger.info("source %s: IDLE failed (%s); polling carries on", self.source_id, exc)
                self.stopped.wait(backoff(failures, app.config["INTAKE_RETRY_BASE_SECONDS"],
                                          app.config["INTAKE_RETRY_MAX_SECONDS"]))
