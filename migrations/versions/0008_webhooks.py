"""webhooks: users' subscriptions (webhooks, email choices) and the outbox of events to deliver

Revision ID: 0009_webhooks
Revises: 0008_share_nonce
File number = place in the chain; the revision id is the one databases already store (migrations/README).
"""
import sqlalchemy as sa
from alembic import op

revision = '0009_webhooks'
down_revision = '0008_share_nonce'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'subscriptions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=True),
        sa.Column('events', sa.String(length=255), nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    # Every job that completes or fails looks its owner up here (Job._transition's INSERT … SELECT).
    op.create_index('ix_subscriptions_user', 'subscriptions', ['user_id', 'kind'])
    op.create_table(
        'outbox',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('subscription_id', sa.String(length=32), nullable=True),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=True),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
        sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
        sa.Column('last_attempt_at', sa.DateTime(), nullable=True),
        sa.Column('last_status', sa.String(length=255), nullable=True),
        sa.Column('delivered_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_outbox_due', 'outbox', ['state', 'next_attempt_at'])
    op.create_index('ix_outbox_subscription', 'outbox', ['subscription_id', 'created_at'])


def downgrade():
    op.drop_index('ix_outbox_subscription', table_name='outbox')
    op.drop_index('ix_outbox_due', table_name='outbox')
    op.drop_table('outbox')
    op.drop_index('ix_subscriptions_user', table_name='subscriptions')
    op.drop_table('subscriptions')
