"""What tests and benchmarks share: the app and its client (app.py), real processes on loopback (stack.py), a fake
gateway (fakegateway.py), invoices (invoicegen.py), people (people.py), a webhook receiver (receiver.py) and
throwaway Redis and PostgreSQL servers (services.py). bench/ imports these too; nothing here is a test."""
