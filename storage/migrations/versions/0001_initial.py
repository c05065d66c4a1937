"""Initial schema: studies, layers, sensitivity scores, latency, candidates, evaluations, artifacts.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
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
    op.create_table('bitsearch_studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('spec_version', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('CREATED', 'RUNNING', 'PAUSED', 'COMPLETE', 'FAILED')", name='ck_study_state'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('bitsearch_candidates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('fidelity', sa.String(length=32), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("origin IN ('ilp', 'optuna', 'greedy', 'import', 'uniform')", name='ck_candidate_origin'),
    sa.CheckConstraint("state IN ('WAITING', 'RUNNING', 'COMPLETE', 'FAILED', 'INVALID')", name='ck_candidate_state'),
    sa.ForeignKeyConstraint(['study_id'], ['bitsearch_studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'config_hash', name='uq_candidate_hash')
    )
    op.create_index('ix_candidate_claim', 'bitsearch_candidates', ['study_id', 'state', 'priority', 'id'])
    op.create_table('bitsearch_layers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('fqn', sa.String(length=500), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('weight_shape', sa.JSON(), nullable=False),
    sa.Column('params', sa.BigInteger(), nullable=False),
    sa.Column('macs', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['bitsearch_studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'fqn', name='uq_layer_fqn')
    )
    op.create_index('ix_bitsearch_layers_study_id', 'bitsearch_layers', ['study_id'])
    op.create_table('bitsearch_score_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('estimator', sa.String(length=64), nullable=False),
    sa.Column('metric', sa.String(length=32), nullable=False),
    sa.Column('timestep_groups', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['bitsearch_studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'estimator', 'metric', name='uq_score_set')
    )
    op.create_index('ix_bitsearch_score_sets_study_id', 'bitsearch_score_sets', ['study_id'])
    op.create_table('bitsearch_artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('media_type', sa.String(length=100), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(data IS NULL) != (path IS NULL)', name='ck_artifact_data_or_path'),
    sa.ForeignKeyConstraint(['candidate_id'], ['bitsearch_candidates.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_id'], ['bitsearch_studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_bitsearch_artifacts_candidate_id', 'bitsearch_artifacts', ['candidate_id'])
    op.create_index('ix_bitsearch_artifacts_study_id', 'bitsearch_artifacts', ['study_id'])
    op.create_table('bitsearch_evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('fidelity', sa.String(length=32), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('latency_s', sa.Float(), nullable=True),
    sa.Column('peak_memory_bytes', sa.BigInteger(), nullable=True),
    sa.Column('run_labels', sa.JSON(), nullable=False),
    sa.Column('layers_real', sa.Integer(), nullable=False),
    sa.Column('layers_simulated', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=64), nullable=False),
    sa.Column('machine', sa.String(length=200), nullable=False),
    sa.Column('measured', sa.Boolean(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['bitsearch_candidates.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_id'], ['bitsearch_studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('candidate_id', 'fidelity', name='uq_evaluation_fidelity')
    )
    op.create_index('ix_bitsearch_evaluations_candidate_id', 'bitsearch_evaluations', ['candidate_id'])
    op.create_index('ix_bitsearch_evaluations_study_id', 'bitsearch_evaluations', ['study_id'])
    op.create_table('bitsearch_sensitivity_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('score_set_id', sa.Integer(), nullable=False),
    sa.Column('fqn', sa.String(length=500), nullable=False),
    sa.Column('timestep_group', sa.Integer(), nullable=False),
    sa.Column('w_bits', sa.Integer(), nullable=False),
    sa.Column('a_bits', sa.Integer(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('stderr', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['score_set_id'], ['bitsearch_score_sets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('score_set_id', 'fqn', 'timestep_group', 'w_bits', 'a_bits', name='uq_score')
    )
    op.create_index('ix_bitsearch_sensitivity_scores_score_set_id', 'bitsearch_sensitivity_scores', ['score_set_id'])



def downgrade() -> None:
    op.drop_index('ix_bitsearch_sensitivity_scores_score_set_id', table_name='bitsearch_sensitivity_scores')
    op.drop_table('bitsearch_sensitivity_scores')
    op.drop_index('ix_bitsearch_evaluations_study_id', table_name='bitsearch_evaluations')
    op.drop_index('ix_bitsearch_evaluations_candidate_id', table_name='bitsearch_evaluations')
    op.drop_table('bitsearch_evaluations')
    op.drop_index('ix_bitsearch_artifacts_study_id', table_name='bitsearch_artifacts')
    op.drop_index('ix_bitsearch_artifacts_candidate_id', table_name='bitsearch_artifacts')
    op.drop_table('bitsearch_artifacts')
    op.drop_index('ix_bitsearch_score_sets_study_id', table_name='bitsearch_score_sets')
    op.drop_table('bitsearch_score_sets')
    op.drop_index('ix_bitsearch_layers_study_id', table_name='bitsearch_layers')
    op.drop_table('bitsearch_layers')
    op.drop_index('ix_candidate_claim', table_name='bitsearch_candidates')
    op.drop_table('bitsearch_candidates')
    op.drop_table('bitsearch_studies')
    op.drop_table('bitsearch_latency')
