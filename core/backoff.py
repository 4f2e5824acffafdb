"""How long to wait before trying again after failures: one rule for a job's retries (worker/retry.py), a webhook
delivery's (core/outbox.py next_delay) and the breaker's probes of the gateway (worker/breaker.py)."""
import math
import random


def backoff(failures, base, cap=math.inf, *, jitter=0.0, spread=0.0, rand=random.random):
    """Seconds to wait after failures in a row (1, 2, …): base, doubled at each failure after the first and at most
    cap; plus, at random (rand() in [0, 1)), up to jitter seconds and up to spread times that wait, so that tries that
    failed together do not come back together."""
    delay = min(base * 2 ** max(failures - 1, 0), cap)
    if jitter or spread:
        delay += rand() * (jitter + spread * delay)
    return delay
