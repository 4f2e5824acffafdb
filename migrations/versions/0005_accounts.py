"""accounts: users, their sign-in sessions, personal API tokens and one-time links (jobs keep their owners)

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    # Jobs keep jobs.owner as it is: an anonymous browser's id from before accounts matches no user, and its
    # jobs stay visible in the admins' "Everyone" view, which lists everyone's jobs newest first.
    op.create_index('ix_jobs_created', 'jobs', ['created_at', 'id'])
    # Each upload sums the owner's kept PDFs against their quota: an index of just those rows.
    op.create_index('ix_jobs_owner_kept', 'jobs', ['owner', 'bytes'], sqlite_where=sa.text('upload_path IS NOT NULL'),
                    postgresql_where=sa.text('upload_path IS NOT NULL'))
    op.create_table(
        'users',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('password_hash', sa.Text(), nullable=True),
        sa.Column('admin', sa.Boolean(), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('signed_in_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('email'),
    )
    op.create_table(
        'user_sessions',
        sa.Column('key_digest', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('key_digest'),
    )
    op.create_index('ix_user_sessions_user', 'user_sessions', ['user_id'])
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('secret_digest', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('last_used_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('secret_digest'),
    )
    op.create_index('ix_api_tokens_user', 'api_tokens', ['user_id'])
    op.create_table(
        'one_time_links',
        sa.Column('secret_digest', sa.String(length=64), nullable=False),
        sa.Column('purpose', sa.String(length=16), nullable=False),
        sa.Column('email', sa.String(length=320), nullable=True),
        sa.Column('user_id', sa.String(length=32), nullable=True),
        sa.Column('admin', sa.Boolean(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('secret_digest'),
    )


def downgrade():
    op.drop_index('ix_jobs_owner_kept', table_name='jobs')
    op.drop_index('ix_jobs_created', table_name='jobs')
    op.drop_table('one_time_links')
    op.drop_index('ix_api_tokens_user', table_name='api_tokens')
    op.drop_table('api_tokens')
    op.drop_index('ix_user_sessions_user', table_name='user_sessions')
    op.drop_table('user_sessions')
    op.drop_table('users')
