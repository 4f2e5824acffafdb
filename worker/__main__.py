"""`python -m worker`: run the worker (worker/consumer.py)."""
from worker.consumer import main

main()
