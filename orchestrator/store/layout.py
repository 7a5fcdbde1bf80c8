"""caviar's MLflow layout: every tag name caviar writes, the parameters and metrics it reads
back, and how its runs are found again. The one place these names are spelled.

A sweep, a panda session and a revisit are each one *parent* run (``KIND`` says which),
stamped with ``SWEEP_ID``; each trial, segment or re-trained configuration is a nested
*child* run of it (MLflow's ``PARENT_RUN`` tag), keyed by ``TRIAL_INDEX``. The writers
(``engine/observer.py``, ``engine/run.py``, ``panda/``) and the readers (``reader.py``,
``panda_runs.py``, ``mlflow_sink.py``) import these names; docs/design.md lists them.

Plain strings, no MLflow import: the engine and panda name tags without loading MLflow.
"""

from __future__ import annotations

# --- what a parent run is ----------------------------------------------------------------
KIND = "caviar.kind"  # one of the kinds below
SWEEP, PANDA, REVISIT = "sweep", "panda", "revisit"
MODE = "caviar.mode"  # panda sessions: "panda"
SWEEP_ID = "caviar.sweep_id"  # the sweep's (session's, revisit's) id: its folder's name
SPEC_HASH = "caviar.spec_hash"  # SweepSpec.spec_hash(): what a resume must share
TRAINABLE = "caviar.trainable"  # the spec's trainable reference
VERSION = "caviar.version"  # caviar's package version
GIT_COMMIT = "caviar.git_commit"  # caviar's source commit, where it runs from a checkout
NOTE = "mlflow.note.content"  # the spec's description, shown by MLflow's UI
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: a child run's parent
RUN_NAME = "mlflow.runName"  # MLflow's own: a run's name, which create_run sets

# --- a finished sweep's parent -----------------------------------------------------------
BEST_TRIAL_ID = "caviar.best_trial_id"  # the best trial's TRIAL_ID
BEST_TRIAL_INDEX = "caviar.best_trial_index"  # the best trial's index
BEST_RUN_ID = "caviar.best_run_id"  # the best trial's child run
MODEL_URI = "caviar.model_uri"  # the best model (a sweep) or the final model (a panda session)


def round_best_run_id(round_number: int) -> str:
    return f"caviar.round{round_number}.best_run_id"


def round_notes(round_number: int) -> str:
    """What the zoom noted when it planned the round (a region it could not narrow, say)."""
    return f"caviar.round{round_number}.notes"


# --- a trial's (child) run ---------------------------------------------------------------
TRIAL_ID = "caviar.trial_id"  # trials.trial_key(sweep id, index): unique across sweeps
RAY_TRIAL_ID = "caviar.ray_trial_id"  # Tune's; a pack member's is its pack's
TRIAL_INDEX = "caviar.trial_index"  # the trial's index in the sweep: the child's key
ROUND = "caviar.round"  # the zoom round that planned the trial (1 without zoom)
SAMPLED = "caviar.sampled"  # the parameters sampled (not fixed), comma-separated
PACK = "caviar.pack"  # a pack member's pack number
PACK_SIZE = "caviar.pack_size"  # members in that pack
OUTCOME = "caviar.outcome"  # the trial's final TrialState
LAST_EPOCH = "caviar.last_epoch"  # epochs the trial trained
NODE_ID = "caviar.node_id"  # the Ray node the trial last ran on
ERROR = "caviar.error"  # a failed trial's error, in one line
# Population-based training: a trial's copies, "EPOCH<-FROM" each (e.g. "4<-7, 8<-2"), and
# the trial whose weights it ended with (its own index when it never copied).
PBT_COPIES = "caviar.pbt.copies"
PBT_LINE_FROM = "caviar.pbt.line_from"
# The parent's artifact: every exploit [{epoch, trial, from_trial, before, after}, ...].
PBT_LINEAGE_ARTIFACT = "pbt/lineage.json"

# --- a panda session (parent) and its segments (children) -------------------------------
PANDA_DIR = "caviar.panda.dir"  # the session's folder, where `caviar panda` finds it
PANDA_FROM_RUN = "caviar.panda.from_run"  # --from: the trial the session started from
PANDA_REPLAY_OF = "caviar.panda.replay_of"  # --replay: the PBT trial whose schedule it trains
PANDA_STATUS = "caviar.panda.status"  # how the session ended
PANDA_PAUSES = "caviar.panda.pauses"  # the session's pauses (epoch and length)
PANDA_SEGMENT = "caviar.panda.segment"  # the segment's index
PANDA_START_EPOCH = "caviar.panda.start_epoch"  # the epoch the segment starts from
PANDA_REASON = "caviar.panda.reason"  # why the segment began (the change's reason)
PANDA_BY = "caviar.panda.by"  # who asked for the change: a person or a rule
PANDA_CHANGES = "caviar.panda.changes"  # JSON
PANDA_PARENT_SEGMENT = "caviar.panda.parent_segment"  # the lineage (a branch's origin)
PANDA_PARENT_RUN_ID = "caviar.panda.parent_run_id"  # the parent segment's run
PANDA_ENDED_BY = "caviar.panda.ended_by"  # what ended the segment (a change, a rule, the end)

# --- a revisit (parent) and its re-trained configurations (children) ---------------------
REVISITS = "caviar.revisits"  # the revisited sweep's parent run id
REVISIT_TOP = "caviar.revisit.top"  # how many configurations were re-trained
REVISIT_MOVED = "caviar.revisit.moved"  # the old ranks whose place changed
REVISIT_OLD_RANK = "caviar.revisit.old_rank"  # the configuration's rank in the revisited sweep
REVISIT_OLD_RUN_ID = "caviar.revisit.old_run_id"  # its trial's run in the revisited sweep

# --- parameters of a sweep's parent that the reader reads back ---------------------------
OBJECTIVE_PARAM = "objective"  # "<mode> <metric>", e.g. "max val_accuracy"
SCHEDULER_KIND_PARAM = "scheduler.kind"  # asha | fifo | pbt
MAX_EPOCHS_PARAM = "scheduler.max_epochs"  # a trial's epoch budget
GRACE_PERIOD_PARAM = "scheduler.grace_period"  # asha: with the reduction factor, the rungs
REDUCTION_FACTOR_PARAM = "scheduler.reduction_factor"  # asha

# --- metrics of a sweep's parent that the reader reads back ------------------------------
# The search converging (search/best_so_far.py), each point at the epochs spent so far (its
# step): the best objective of the trials trained in full, and the round number when a round
# began.
BEST_SO_FAR_METRIC = "best_so_far"
ROUND_STARTED_METRIC = "round"

# --- how runs are found -----------------------------------------------------------------
SWEEPS_FILTER = f"tags.`{KIND}` = '{SWEEP}'"  # every sweep's parent run of an experiment


def stamped_filter(run_id: str) -> str:
    """The search filter of the runs stamped with a sweep's (session's, revisit's) id."""
    return f"tags.`{SWEEP_ID}` = '{run_id}'"


def children_filter(parent_run_id: str) -> str:
    """The search filter of a parent run's children (trials, segments)."""
    return f"tags.{PARENT_RUN} = '{parent_run_id}'"
