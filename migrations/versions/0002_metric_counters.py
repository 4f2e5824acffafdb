"""metric counters shared by every process (gateway latency, rejected uploads, job outcomes)

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('metric_counters',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('labels', sa.String(length=255), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'labels')
    )


def downgrade():
    op.drop_table('metric_counters')
