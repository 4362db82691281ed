"""The training machinery: the fine-tuning loop, its batches, optimiser, validation, run folders, seeds, several
processes, the recipes and the command line (`python -m clip_helpers.training`)."""
