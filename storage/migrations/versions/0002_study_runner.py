"""Studies record why they failed (`reason`) and who runs them (`owner`, `heartbeat_at`), so an API
server that restarts resumes the studies its dead predecessor was running.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table much; alembic copies it (PostgreSQL alters in place)
    with op.batch_alter_table('bitsearch_studies') as batch:
        batch.add_column(sa.Column('reason', sa.Text(), nullable=True))
        batch.add_column(sa.Column('owner', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bitsearch_studies') as batch:
        batch.drop_column('heartbeat_at')
        batch.drop_column('owner')
        batch.drop_column('reason')
