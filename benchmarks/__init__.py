"""Side-by-side measurements of the runbook against the tools it replaces."""
