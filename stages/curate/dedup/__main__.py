"""python -m stages.curate.dedup: run the stage (dvc.yaml does)."""
from stages.core.runner import run
from stages.curate.dedup import STAGE

run(STAGE)
