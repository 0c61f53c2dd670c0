"""A scripted teacher for tests and benchmarks: a `TestOpenAIServer` responder that follows the
phase-2 prompts (a JSON array of exactly N distinct, well-formed items), so the whole pipeline can be
exercised without a real LLM. Not used by the stage itself."""

from __future__ import annotations

import json
import re

_OPENERS = ["Could you", "Please", "I'd like you to", "Can you", "Would you", "Kindly", "I need you to", "Help me:"]


def scripted_teacher(messages: list[dict], params: dict) -> str:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    m = re.search(r"exactly (\d+) strings", system)
    n = int(m.group(1)) if m else 1
    user = messages[-1]["content"]
    text = user.split("\n\n", 1)[-1].split(":", 1)[-1].strip()
    items = [f"{_OPENERS[k % len(_OPENERS)]} (variant {k + 1}) {text}" for k in range(n)]
    return json.dumps(items)
