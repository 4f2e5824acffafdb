"""derived state is derived: drop jobs.result_expired and jobs.last_attempt_at; coordination's two kinds of time;
job_removals, so every open page hears of a deletion

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# Coordination rows whose expires_at meant "next due" rather than "lease ends".
DUE_ROWS = ('breaker', 'retention')


def upgrade():
    jobs = sa.table('jobs', sa.column('status'), sa.column('result_path'), sa.column('result_expired'))
    # An expired result is a complete job without a result_path; retention already cleared the path, but make sure.
    op.execute(jobs.update().where(jobs.c.result_expired == sa.true()).values(result_path=None))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('result_expired')
        batch_op.drop_column('last_attempt_at')

    with op.batch_alter_table('coordination', schema=None) as batch_op:
        batch_op.alter_column('expires_at', new_column_name='lease_expires_at')
        batch_op.add_column(sa.Column('due_at', sa.DateTime(), nullable=True))
    coordination = sa.table('coordination', sa.column('name'), sa.column('lease_expires_at'), sa.column('due_at'))
    op.execute(coordination.update().where(coordination.c.name.in_(DUE_ROWS))
               .values(due_at=coordination.c.lease_expires_at, lease_expires_at=None))

    op.create_table(
        'job_removals',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('removed_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('job_id'),
    )
    with op.batch_alter_table('job_removals', schema=None) as batch_op:
        batch_op.create_index('ix_job_removals_owner_removed', ['owner', 'removed_at'], unique=False)
        batch_op.create_index('ix_job_removals_removed', ['removed_at'], unique=False)


def downgrade():
    op.drop_table('job_removals')

    coordination = sa.table('coordination', sa.column('name'), sa.column('lease_expires_at'), sa.column('due_at'))
    op.execute(coordination.update().where(coordination.c.name.in_(DUE_ROWS))
               .values(lease_expires_at=coordination.c.due_at))
    with op.batch_alter_table('coordination', schema=None) as batch_op:
        batch_op.drop_column('due_at')
        batch_op.alter_column('lease_expires_at', new_column_name='expires_at')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_attempt_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('result_expired', sa.Boolean(), nullable=False, server_default=sa.false()))
    jobs = sa.table('jobs', sa.column('status'), sa.column('result_path'), sa.column('result_expired'))
    op.execute(jobs.update().where(jobs.c.status == 'complete', jobs.c.result_path.is_(None))
               .values(result_expired=True))
