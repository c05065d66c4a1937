"""Drops the per-layer latency table of 0001: nothing wrote or read it since a study's target tables
(latency AND memory per bit pair, the rest of the call, the fastest float format) are stored with the
study as an artifact keyed by machine and threads.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table('bitsearch_latency')


def downgrade() -> None:
    op.create_table('bitsearch_latency',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('backend', sa.String(length=64), nullable=False),
    sa.Column('machine', sa.String(length=200), nullable=False),
    sa.Column('fqn', sa.String(length=500), nullable=False),
    sa.Column('w_bits', sa.Integer(), nullable=False),
    sa.Column('a_bits', sa.Integer(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model', 'backend', 'machine', 'fqn', 'w_bits', 'a_bits', name='uq_latency')
    )
