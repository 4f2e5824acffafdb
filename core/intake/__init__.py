"""Intake: turning what arrives in a source (core/sources.py) into jobs, nothing lost and nothing twice.

runner.py polls one source under its lease (never two polls of a source at once) and holds the rules every file
meets, the upload's own (core/acceptance.py); imap.py reads a mailbox, folder.py a folder. The worker calls them
from its upkeep (worker/intake.py), the admin CLI's `sources poll` in the foreground.

The guarantee does not rest on remembering what was taken (IMAP UIDs restart when a mailbox is recreated): a
message or a file leaves its place only after its jobs are committed, and content dedupe makes taking it again,
after a crash between the two, create nothing.
"""
