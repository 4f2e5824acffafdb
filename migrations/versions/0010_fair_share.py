"""fair share: each job's place in its owner's queue (jobs.queue_key), and the indexes the fair claim reads

Revision ID: 0006_fair_share
Revises: 0007b_job_events
File number = place in the chain; the revision id is the one databases already store (migrations/README).
"""
import sqlalchemy as sa
from alembic import op

revision = '0006_fair_share'
down_revision = '0007b_job_events'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queue_key', sa.DateTime(), nullable=True))
    jobs = sa.table('jobs', sa.column('queue_key'), sa.column('created_at'), sa.column('next_attempt_at'))
    # A job waiting out a back-off queues by its retry time; every other one by its upload.
    op.execute(jobs.update().values(queue_key=sa.func.coalesce(jobs.c.next_attempt_at, jobs.c.created_at)))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('queue_key', existing_type=sa.DateTime(), nullable=False)
        # The fair claim: owners with queued jobs (a skip-scan), each one's head, and when each was last served.
        batch_op.create_index('ix_jobs_status_owner_queue', ['status', 'owner', 'queue_key', 'id'], unique=False)
        batch_op.create_index('ix_jobs_owner_started', ['owner', 'started_at'], unique=False)


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_owner_started')
        batch_op.drop_index('ix_jobs_status_owner_queue')
        batch_op.drop_column('queue_key')
