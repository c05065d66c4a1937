"""A candidate's origin is free text: which solvers exist is the solver registry's business (search
validates origins against it), so a new solver no longer needs a migration. Drops the CHECK that froze
the names of 0001 and widens the column for longer names.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# the names 0001 allowed; the downgrade puts them back (and fails on a database holding others)
_OLD_ORIGINS = "origin IN ('ilp', 'optuna', 'greedy', 'import', 'uniform')"


def upgrade() -> None:
    # batch mode: SQLite cannot drop a constraint; alembic copies the table (PostgreSQL alters in place)
    with op.batch_alter_table('bitsearch_candidates') as batch:
        batch.drop_constraint('ck_candidate_origin', type_='check')
        batch.alter_column('origin', existing_type=sa.String(length=16), type_=sa.String(length=64),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('bitsearch_candidates') as batch:
        batch.alter_column('origin', existing_type=sa.String(length=64), type_=sa.String(length=16),
                           existing_nullable=False)
        batch.create_check_constraint('ck_candidate_origin', _OLD_ORIGINS)
