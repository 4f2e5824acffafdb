"""The jobs table, in the parts that change for different reasons:

    states.py    what a job's states are called: Status, ACTIVE, FINISHED, the filters of lists (FILTERS)
    model.py     Job: its columns, what follows from its state, and every transition
    engine.py    how a transition is written: an UPDATE built once, run with its history and outbox rows
    reads.py     JobReads, Job's queries: one job, lists and their filters, changes, totals (the pages, the API)
    claims.py    JobClaims: which queued job a worker claims next (fair share), the claim, the worker's reads
    history.py   JobEvent: each job's history, written by its transitions
    removals.py  JobRemoval: deleted jobs, remembered for open pages

Job is one class, `from core.jobs.model import Job`, whatever part a method is written in.
"""
