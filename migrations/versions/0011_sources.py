"""sources: mailboxes and folders that feed an owner's queue, and each job's source

Revision ID: 0011
Revises: 0006_fair_share
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0006_fair_share'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'sources',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('url', sa.String(length=1024), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('mapping', sa.String(length=128), nullable=False),
        sa.Column('allow_from', sa.Text(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('secret', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('last_poll_at', sa.DateTime(), nullable=True),
        sa.Column('last_ok_at', sa.DateTime(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('polls', sa.Integer(), nullable=False),
        sa.Column('errors', sa.Integer(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('files_taken', sa.Integer(), nullable=False),
        sa.Column('files_rejected', sa.Integer(), nullable=False),
        sa.Column('next_poll_at', sa.DateTime(), nullable=True),
        sa.Column('lease_holder', sa.String(length=128), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
        sa.Column('window_started_at', sa.DateTime(), nullable=True),
        sa.Column('window_files', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('source_kind', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('source_from', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('source_subject', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('source_message_id', sa.String(length=1024), nullable=True))


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('source_message_id')
        batch_op.drop_column('source_subject')
        batch_op.drop_column('source_from')
        batch_op.drop_column('source_kind')
        batch_op.drop_column('source_id')
    op.drop_table('sources')
