"""The judge at scale: judge_texts fanned out over Ray Data actors (libra_ray.llm.stage), against the real
local test server, with the cluster-wide budget and throughput in the client's stats."""

from __future__ import annotations

from libra_ray.llm.client import ChatClient
from libra_ray.llm.config import EndpointConfig
from libra_ray.llm.judge import judge_texts
from libra_ray.llm.testserver import TestOpenAIServer
from libra_ray.policy.judge_prompts import get_judge_prompt


def test_judge_on_ray_data_keeps_order_retries_and_counts(ray_local, tmp_path):
    def judge(messages, params):  # "Yes" for texts with "alpha", a garbled reply for "weird"
        text = messages[-1]["content"]
        return "maybe?" if "weird" in text and not params.get("seed") else ("Yes" if "alpha" in text else "No")

    texts = [f"text {i} {'alpha' if i % 3 == 0 else 'plain'}{' weird' if i == 4 else ''}" for i in range(30)]
    with TestOpenAIServer(responder=judge) as server:
        client = ChatClient(EndpointConfig(base_url=server.base_url, api_key_env=None, max_concurrency=8),
                            cache_dir=str(tmp_path / "cache"))
        verdicts = judge_texts(client, get_judge_prompt("synthesis_route_v1"), texts, max_attempts=2,
                               retry_params=lambda k: {"seed": k}, ray_data_min_rows=1)
        sent = server.request_count
    assert [v.label for v in verdicts] == ["yes" if i % 3 == 0 else "no" for i in range(30)]
    assert verdicts[4].attempts == 2 and sent == 31  # the unparseable one was asked again (on Ray Data too)
    stats = client.stats.as_dict()
    # The actors' counters came back to the driver's client; throughput for the report.
    assert stats["requests"] == 31 and stats["calls"] == 31 and stats["judged_rows"] == 30
    assert stats["judged_rows_per_s"] > 0 and stats["busy_s"] == 0  # the driver's client sent nothing itself


def test_small_batches_stay_on_the_driver(ray_local):
    class Recorder:
        def __init__(self):
            self.calls = 0

        def chat_many(self, batch, **params):
            from libra_ray.llm.client import ChatResult

            self.calls += 1
            return [ChatResult("No", None, 1, 1, False, None, None) for _ in batch]

    client = Recorder()  # not a ChatClient: never sent to Ray Data, whatever the size
    verdicts = judge_texts(client, get_judge_prompt("synthesis_route_v1"), ["a"] * 50, ray_data_min_rows=10)
    assert client.calls == 1 and all(v.label == "no" for v in verdicts)
