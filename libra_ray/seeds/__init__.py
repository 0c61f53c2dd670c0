"""Stage: seeds."""
