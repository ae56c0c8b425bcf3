"""The experiment protocol: one run from data to record (experiment), the grid runner (run), the plan
of a profile (plan), per-question predictions."""
