"""`python -m clip_helpers.training`: the fine-tuning command line (clip_helpers.training.finetune)."""
from .finetune import main

if __name__ == "__main__":
    main()
