"""An evaluation records the float model's latency measured side by side with the candidate's
(`float_latency_s`): their ratio holds whatever else loads the machine, which a latency timed alone
does not. Evaluations stored before it have none (NULL): their latency is shown as measured alone.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bitsearch_evaluations') as batch:
        batch.add_column(sa.Column('float_latency_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bitsearch_evaluations') as batch:
        batch.drop_column('float_latency_s')
