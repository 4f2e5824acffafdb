"""Intake in the worker: the process that leads upkeep (the maintenance lease, worker/upkeep.py) also polls the
sources that are due (core/intake/) and watches every folder source with watchfiles, polling a folder as soon as
something in it changes. Polls run on a small pool so that a slow mailbox holds up no other source; each takes its
source's lease first (core/sources.py), so a poll never starts while the source's previous one still runs, in this
process or in another that led before."""
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import watchfiles

from core.coordination import Coordination
from core.clock import utcnow
from core.db import db
from core.intake import runner
from core.sources import FOLDER, Source
from worker.leases import PROCESS_ID
from worker.upkeep import MAINTENANCE

logger = logging.getLogger("pdfqueue.intake")

TICK_SECONDS = 1.0  # how often due sources are looked for (and the folder watch given a chance to end)
POLLERS = 2  # polls at a time in this process


class Intake(threading.Thread):
    """While this process leads upkeep: poll due sources, and watch folder sources to poll them at once."""

    def __init__(self, app):
        super().__init__(name="intake", daemon=True)
        self.app = app
        self.stopped = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=POLLERS, thread_name_prefix="intake-poll")
        self.in_flight = set()  # source ids this process is polling now
        self.lock = threading.Lock()

    def run(self):
        while not self.stopped.is_set():
            try:
                folders = self._folders() if self._leads() else None
                if folders:
                    self._watch(folders)
                else:
                    if folders is not None:
                        self.tick()
                    self.stopped.wait(TICK_SECONDS)
            except Exception:  # intake must outlive a bad tick (database restarting, say); the next one retries
                logger.exception("intake tick failed")
                self.stopped.wait(TICK_SECONDS)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def stop(self):
        self.stopped.set()

    def _leads(self):
        with self.app.app_context():
            try:
                row = Coordination.get(MAINTENANCE)
                return row is not None and row.holder == PROCESS_ID and row.lease_expires_at > utcnow()
            finally:
                db.session.remove()

    def _folders(self):
        """{source id: folder} of the enabled folder sources whose folder exists."""
        with self.app.app_context():
            try:
                sources = [source for source in Source.listed() if source.enabled and source.kind == FOLDER]
                return {source.id: source.parts["path"] for source in sources if os.path.isdir(source.parts["path"])}
            finally:
                db.session.remove()

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
            if not self._leads() or self._folders() != folders:
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
