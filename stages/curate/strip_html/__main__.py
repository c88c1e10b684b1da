"""python -m stages.curate.strip_html: run the stage (dvc.yaml does)."""
from stages.core.runner import run
from stages.curate.strip_html import STAGE

run(STAGE)
