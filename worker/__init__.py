"""pdfqueue's worker process: Huey's consumer running the wake-ups of tasks.py, its upkeep, and the deliverer of
webhooks and emails. It stands on the core (core/) and never imports the web (webapp/). `python -m worker` runs it.
"""
