"""share nonce: each job's share links carry it; a new one revokes them all

Revision ID: 0008_share_nonce
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0008_share_nonce'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    # Null until the job is first shared. Links signed before this revision (owner id, no nonce) stop working.
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('share_nonce', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('share_nonce')
