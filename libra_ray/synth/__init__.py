"""Stage: synth."""
