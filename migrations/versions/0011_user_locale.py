"""user locale: the language a person chose for pages and emails (users.locale; NULL: their browser's, else
DEFAULT_LOCALE)

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
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=16), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('locale')
