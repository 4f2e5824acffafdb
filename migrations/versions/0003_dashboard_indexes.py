"""indexes for the dashboard: metrics and active count per owner, and the change feed's newest-change scan

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        # Covers the metrics box (counts by status, average duration) and the active count: no table reads.
        batch_op.create_index('ix_jobs_owner_status', ['owner', 'status', 'started_at', 'completed_at'], unique=False)
        # The change feed asks "what changed since t" across owners every 250 ms.
        batch_op.create_index('ix_jobs_updated', ['updated_at'], unique=False)


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_updated')
        batch_op.drop_index('ix_jobs_owner_status')
