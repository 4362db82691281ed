"""`python -m clip_helpers.training`: the fine-tuning command line (clip_helpers.training.finetune)."""
from .finetune import main

main()
