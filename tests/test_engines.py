"""The shared engine layer (`libra_ray.engines`), fast: bench and serve decode alike, and every request in a
batch keeps its own parameters (seed included); a bad one fails only itself. Transformers engine on the
tiny model; the vLLM counterparts are in tests/test_engines_e2e.py (marked e2e)."""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pytest

from libra_ray.engines import GREEDY_MAX_TEMPERATURE, GenParams, RequestError

PROMPTS = ["hi", "Tell me about aspirin.", "What is the boiling point of water?", "List three solvents."]


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    from libra_ray.engines.transformers_engine import TransformersEngine

    return TransformersEngine(str(tiny_model_path), max_model_len=256)


@pytest.fixture(autouse=True)
def _serve_batch_outside_a_replica(monkeypatch):
    """@serve.batch runs in plain asyncio; only its config warning asks for a replica context."""
    from ray.serve import batching

    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                        lambda self: None)


def _ids(engine, prompts=PROMPTS):
    return [engine.chat_ids(p) for p in prompts]


@pytest.fixture(scope="module")
def server(tiny_model_path):
    """serve's ModelServer (the deployment's class itself, no Ray) and the one event loop it runs on:
    @serve.batch keeps its queue per decorated method, bound to the first loop that used it."""
    from libra_ray.serve.app import ModelServer

    loop = asyncio.new_event_loop()
    srv = ModelServer.func_or_class({"name": "policy", "path": str(tiny_model_path), "engine": "transformers",
                                     "max_model_len": 256})
    try:
        yield srv, loop.run_until_complete
    finally:
        loop.close()
        _reset_serve_batch_queues(ModelServer.func_or_class)


def _reset_serve_batch_queues(cls) -> None:
    """@serve.batch builds its queue (asyncio objects) on first use and keeps it in the decorated method's
    closure: reset it, or later tests in this process can no longer pickle the deployment for Serve."""
    from ray.serve.batching import _LazyBatchQueueWrapper

    def reset(fn, depth: int = 0) -> None:  # the wrapper sits a few closures deep
        for cell in (getattr(fn, "__closure__", None) or ()) if depth < 4 else ():
            inner = cell.cell_contents
            if isinstance(inner, _LazyBatchQueueWrapper):
                inner._queue = None
            elif callable(inner):
                reset(inner, depth + 1)

    for fn in vars(cls).values():
        reset(fn)


def _serve_request(prompt, **params):
    return {"messages": [{"role": "user", "content": prompt}],
            "params": GenParams(**{"max_tokens": 12, "temperature": 0.0, **params}).__dict__}


def test_greedy_is_one_definition():
    assert GenParams(temperature=0).greedy and GenParams(temperature=GREEDY_MAX_TEMPERATURE).greedy
    assert not GenParams(temperature=2 * GREEDY_MAX_TEMPERATURE).greedy


@pytest.mark.parametrize("bad,param", [
    (dict(seed=10**30), "seed"), (dict(seed=True), "seed"), (dict(max_tokens=True), "max_tokens"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
])
def test_bad_params_are_request_errors(bad, param):
    with pytest.raises(RequestError) as err:
        GenParams(**bad).check()
    assert err.value.param == param and err.value.to_dict()["error"]["type"] == "invalid_request_error"


def test_bench_and_serve_agree_token_for_token(tiny_model_path, server):
    """The bench callable and serve's deployment, each with its own engine instance: same greedy output."""
    from libra_ray.bench.engines import TransformersEngine as BenchEngine

    bench = BenchEngine(str(tiny_model_path), max_model_len=256, max_tokens=12, temperature=0.0, seed=0)
    table = bench(pa.table({"id": [str(i) for i in range(len(PROMPTS))], "prompt": PROMPTS}))
    server, run = server

    async def serve_all():  # concurrent, so Serve's batching path is the one taken
        return await asyncio.gather(*(server.generate(_serve_request(p)) for p in PROMPTS))

    served = run(serve_all())
    for row, res in zip(table.to_pylist(), served):
        assert row["error"] is None and "error" not in res
        assert row["raw_text"] == res["text"] and row["completion_tokens"] == res["completion_tokens"] > 0
        assert row["prompt_tokens"] == res["prompt_tokens"]
    # And token ids: the bench adapter's engine decodes the same ids the server returned.
    ids = bench.engine.generate_batch(_ids(bench.engine), [bench.params] * len(PROMPTS))
    assert [r["token_ids"] for r in ids] == [r["token_ids"] for r in served]


def test_a_bad_request_never_changes_its_greedy_neighbours(engine):
    ids = _ids(engine)
    greedy = GenParams(max_tokens=10, temperature=0)
    clean = engine.generate_batch(ids, [greedy] * 4)
    mixed = engine.generate_batch(ids[:2] + [ids[0]] + ids[2:], [greedy, greedy, GenParams(seed=10**30), greedy, greedy])
    assert mixed[2]["error"]["param"] == "seed" and mixed[2]["error"]["type"] == "invalid_request_error"
    assert [r["token_ids"] for r in mixed[:2] + mixed[3:]] == [r["token_ids"] for r in clean]


def test_each_sampled_request_keeps_its_own_seed(engine):
    ids = _ids(engine)
    a, b = GenParams(max_tokens=16, temperature=1.5, seed=1), GenParams(max_tokens=16, temperature=1.5, seed=2)
    batch = engine.generate_batch([ids[1], ids[1], ids[2], ids[3]], [a, b, GenParams(max_tokens=8, temperature=0), a])
    solo_a = engine.generate_batch([ids[1]], [a])[0]
    solo_b = engine.generate_batch([ids[1]], [b])[0]
    assert batch[0]["token_ids"] == solo_a["token_ids"] and batch[1]["token_ids"] == solo_b["token_ids"]
    assert solo_a["token_ids"] != solo_b["token_ids"]  # the seeds matter (not one seed for the whole batch)
    assert batch[3]["token_ids"] == engine.generate_batch([ids[3]], [a])[0]["token_ids"]
    assert batch[2]["token_ids"] == engine.generate_batch([ids[2]], [GenParams(max_tokens=8, temperature=0)])[0]["token_ids"]


def test_streaming_uses_the_same_sampling(engine):
    ids = _ids(engine)[1]
    params = GenParams(max_tokens=12, temperature=1.2, top_p=0.9, seed=7)

    async def collect():
        return [item async for item in engine.stream(ids, params)][-1]

    assert asyncio.run(collect())["token_ids"] == engine.generate_batch([ids], [params])[0]["token_ids"]


def test_model_server_isolates_requests_in_one_serve_batch(server):
    """Concurrent requests through serve's @serve.batch path: a bad seed is a 400 for that request only."""
    server, run = server
    reqs = [_serve_request(PROMPTS[0]), _serve_request(PROMPTS[1], temperature=1.0, seed=3),
            _serve_request(PROMPTS[2]), _serve_request(PROMPTS[1], temperature=1.0, seed=4)]
    bad = {"messages": reqs[0]["messages"], "params": {**reqs[0]["params"], "seed": 10**30}}

    async def run_all():
        clean = await asyncio.gather(*(server.generate(r) for r in reqs))
        mixed = await asyncio.gather(*(server.generate(r) for r in [reqs[0], bad, reqs[1], reqs[2], reqs[3]]))
        solo = [(await server.generate(r))["token_ids"] for r in (reqs[1], reqs[3])]
        return clean, mixed, solo

    clean, mixed, solo = run(run_all())
    assert mixed[1]["error"]["param"] == "seed"
    assert [r["token_ids"] for r in mixed[:1] + mixed[2:]] == [r["token_ids"] for r in clean]
    assert solo == [clean[1]["token_ids"], clean[3]["token_ids"]] and solo[0] != solo[1]


def test_batch_failure_is_retried_per_request(engine, monkeypatch):
    """An engine error on a batch (not a parameter problem) fails only the request that causes it."""
    ids = _ids(engine)
    real = type(engine)._generate

    def flaky(self, prompts, params):
        if any(p.seed == 13 for p in params):
            raise RuntimeError("boom")
        return real(self, prompts, params)

    monkeypatch.setattr(type(engine), "_generate", flaky)
    greedy = GenParams(max_tokens=6, temperature=0)
    out = engine.generate_batch(ids[:3], [greedy, GenParams(temperature=1.0, seed=13), greedy])
    assert out[1]["error"]["code"] == "engine_failed" and "error" not in out[0] and "error" not in out[2]


def _engine_with_child(handler: str):
    """A VLLMEngine shell whose 'engine core' is a child process with the given SIGTERM handler."""
    import subprocess
    import sys

    from libra_ray.engines.vllm_engine import VLLMEngine, _child_pids

    engine = object.__new__(VLLMEngine)
    engine._children_before = _child_pids()
    proc = subprocess.Popen([sys.executable, "-c", f"import signal, sys, time\n{handler}\ntime.sleep(60)"])
    time.sleep(0.5)  # the handler is installed

    class Core:  # like vLLM's engine-core client: asks the process to stop and returns at once
        def shutdown(self):
            proc.terminate()

    engine.llm = type("LLM", (), {"llm_engine": type("E", (), {"engine_core": Core()})()})()
    return engine, proc


def test_vllm_shutdown_returns_only_after_the_engine_processes_exited():
    """vLLM's processes clean up while the caller (a Ray actor) is alive: see VLLMEngine.shutdown."""
    import psutil

    engine, proc = _engine_with_child("signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))")
    engine.shutdown(timeout=20)
    assert not psutil.pid_exists(proc.pid) and engine.llm is None
    engine.shutdown()  # a second call is a no-op


def test_vllm_shutdown_kills_an_engine_process_that_does_not_exit():
    import psutil

    engine, proc = _engine_with_child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    started = time.monotonic()
    engine.shutdown(timeout=1)
    assert not psutil.pid_exists(proc.pid) and time.monotonic() - started < 10



# Run in a child process: dictConfig closes every handler of the process it runs in (pytest's included).
_REQUEST_LOG_SCRIPT = """
import contextlib, io, logging, logging.config, logging.handlers, sys
from libra_ray.engines.env import log_handlers_kept

out = io.StringIO()  # wired as Ray Serve wires a replica's request log: a MemoryHandler (capacity 1) over a stream
buffered = logging.handlers.MemoryHandler(1, target=logging.StreamHandler(out))
log = logging.getLogger("ray.serve")
log.propagate, log.handlers = False, [buffered]
log.setLevel(logging.INFO)
with log_handlers_kept() if sys.argv[1] == "guarded" else contextlib.nullcontext():
    # what vLLM does when it builds an engine: dictConfig for its own logger, which closes every handler
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "loggers": {"vllm": {"level": "INFO"}}})
for i in range(50):
    log.info("request %d", i)
print(len(buffered.buffer), len(out.getvalue().splitlines()))
"""


def _request_log_after_engine_start(mode: str) -> tuple[int, int]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _REQUEST_LOG_SCRIPT, mode], capture_output=True, text=True,
                          timeout=60, check=True)
    held, written = done.stdout.split()
    return int(held), int(written)


def test_dictconfig_leaves_a_memory_handler_keeping_every_record():
    # The cause of issue #25's replica growth, in the standard library alone: 50 records held, none written.
    assert _request_log_after_engine_start("unguarded") == (50, 0)


def test_engine_start_keeps_buffered_log_handlers_working():
    assert _request_log_after_engine_start("guarded") == (0, 50)
