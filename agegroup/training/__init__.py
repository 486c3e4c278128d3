"""Training, evaluation and export of the age-group model (each module runnable with -m)."""
