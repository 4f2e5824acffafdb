"""Fair share on PostgreSQL: the same claims as tests/core/test_claims.py, on a real PostgreSQL cluster."""
import pytest
from sqlalchemy import text

from tests.support.services import postgres_cluster
from tests.core.test_claims import (  # noqa: F401  (collected here again, on PostgreSQL)
    test_a_retried_job_queues_by_its_retry_time_not_its_upload,
    test_a_second_owners_job_is_claimed_at_the_next_free_slot_behind_500_of_the_firsts,
    test_claims_go_round_robin_and_fifo_within_an_owner, test_run_next_is_for_admins_and_moves_the_job_first,
    test_run_next_moves_a_job_before_everyone_elses, test_run_next_overrides_a_back_off,
    test_workers_claiming_at_once_take_each_job_once_and_take_turns)
from core.db import db


@pytest.fixture(scope="module")
def database_url():
    with postgres_cluster() as url:
        yield url


@pytest.fixture
def app(make_app, database_url):
    app = make_app(DATABASE_URL=database_url)
    yield app
    with app.app_context():
        db.session.execute(text("TRUNCATE jobs, users CASCADE"))
        db.session.commit()
