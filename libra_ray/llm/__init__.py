"""Shared LLM plumbing: the one OpenAI-compatible client (teacher, judge, hosted baselines)."""
