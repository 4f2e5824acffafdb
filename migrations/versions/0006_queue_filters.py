"""the queue's filters at thousands of jobs: the owner's newest-first index carries file name and status

Revision ID: 0007a_queue_filters
Revises: 0005
File number = place in the chain; the revision id is the one databases already store (migrations/README).
"""
from alembic import op

revision = '0007a_queue_filters'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        # A file-name search (?q=, a LIKE '%…%') or a status filter reads the owner's jobs newest first until a page
        # is full: with filename and status in the index, the rows that do not match are never read from the
        # table, and the filters' counts under a search are counted from the index alone.
        batch_op.drop_index('ix_jobs_owner_created')
        batch_op.create_index('ix_jobs_owner_created', ['owner', 'created_at', 'id', 'filename', 'status'], unique=False)


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_owner_created')
        batch_op.create_index('ix_jobs_owner_created', ['owner', 'created_at', 'id'], unique=False)
