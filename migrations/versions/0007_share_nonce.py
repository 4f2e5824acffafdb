"""share nonce: each job's share links carry it; a new one revokes them all. And file names lose their Unicode
format characters (bidi overrides, zero-width), as uploads now strip them.

Revision ID: 0008_share_nonce
Revises: 0007a_queue_filters
File number = place in the chain; the revision id is the one databases already store (migrations/README).
"""
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = '0008_share_nonce'
down_revision = '0007a_queue_filters'
branch_labels = None
depends_on = None


def upgrade():
    # Null until the job is first shared. Links signed before this revision (owner id, no nonce) stop working.
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('share_nonce', sa.String(length=32), nullable=True))
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('filename', sa.String))
    bind = op.get_bind()
    for job_id, filename in bind.execute(sa.select(jobs.c.id, jobs.c.filename)).all():
        shown = "".join(char for char in filename if unicodedata.category(char) != "Cf").strip() or "upload.pdf"
        if shown != filename:
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(filename=shown))


def downgrade():
    # The stripped characters are gone for good; the names stay as they are.
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('share_nonce')
