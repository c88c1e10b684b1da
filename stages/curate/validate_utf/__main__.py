"""python -m stages.curate.validate_utf: run the stage (dvc.yaml does)."""
from stages.core.runner import run
from stages.curate.validate_utf import STAGE

run(STAGE)
