"""job_events: each job's history (attempts, errors, holds, retries, transitions), written by its transitions

Revision ID: 0007b_job_events
Revises: 0009_webhooks
File number = place in the chain; the revision id is the one databases already store (migrations/README).
"""
import sqlalchemy as sa
from alembic import op

revision = '0007b_job_events'
down_revision = '0009_webhooks'
branch_labels = None
depends_on = None


def upgrade():
    # Jobs from before have no history: their review page says so rather than making one up.
    op.create_table(
        'job_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('error_code', sa.String(length=32), nullable=True),
        sa.Column('message', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Integer(), nullable=True),
        sa.Column('due_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE', onupdate='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_job_events_job', 'job_events', ['job_id', 'id'])


def downgrade():
    op.drop_index('ix_job_events_job', table_name='job_events')
    op.drop_table('job_events')
