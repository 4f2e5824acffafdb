"""A package, so that conftest.py's package-scoped stack (redis-server, PostgreSQL, two web processes, two workers)
stops after these tests rather than idling through the rest of the session."""
