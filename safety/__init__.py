"""Safety stages of the pipeline (ECSO, AlignCoT) and their prompts; they never see backends."""
