"""The serving probe (issue #25): a hostile client's bad requests mixed with good ones, on every engine path.

For each path (transformers; vLLM in our `ModelServer`, `libra`; vLLM on Ray Serve LLM, `ray_serve_llm`):

1. every malformed request of `BAD` sent 2x, mixed with as many valid ones, 16 in flight: the status of each
   (a 5xx or a valid request refused is a finding), plus a truncated body on a raw socket (408 expected);
2. head-of-line: a valid request's latency alone vs beside 8 prompts of ~990 KB (far over the context: a 413
   from their declared size, unread, once the ingress knows the models' bounds; a 400 before), median of 8
   each, as a ratio (1.0 = not slowed); and beside 8 bodies as large that are not JSON (a body must be read to
   find that out, unless its size alone refuses it: then both kinds cost the same);
3. streaming vs non-streaming: over 40 greedy prompts, how many streamed answers differ from the
   non-streamed text (byte for byte).

    python -m benchmarks.serve_probe --paths transformers libra ray_serve_llm
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import socket
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.common import SERVE_PATHS, add_smoke_arg, print_stamp, result_path, set_offline_env, with_serve_path

ROOT = Path(__file__).resolve().parents[1]
MSGS = [{"role": "user", "content": "Tell me about compound A."}]
GOOD = {"model": "policy", "messages": MSGS, "max_tokens": 8, "temperature": 0}
HUGE = {"model": "policy", "messages": [{"role": "user", "content": "aspirin " * 123_000}], "max_tokens": 4}

# (what, body) pairs: each must get a 4xx in OpenAI's error shape.
BAD: list[tuple[str, object]] = [
    ("stop x5", {**GOOD, "stop": list("abcde")}),
    ("max_tokens string", {**GOOD, "max_tokens": "8"}),
    ("max_tokens true", {**GOOD, "max_tokens": True}),
    ("temperature string", {**GOOD, "temperature": "0.5"}),
    ("stream string", {**GOOD, "stream": "yes"}),
    ("n=2", {**GOOD, "n": 2}),
    ("logprobs", {**GOOD, "logprobs": True}),
    ("top_logprobs", {**GOOD, "top_logprobs": 3}),
    ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("tool_choice", {**GOOD, "tool_choice": "auto"}),
    ("response_format", {**GOOD, "response_format": {"type": "json_object"}}),
    ("image part", {**GOOD, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]}),
    ("audio part", {**GOOD, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]}),
    ("content null", {**GOOD, "messages": [{"role": "user", "content": None}]}),
    ("system only", {**GOOD, "messages": [{"role": "system", "content": "be brief"}]}),
    ("unknown field", {**GOOD, "frobnicate": 1}),
    ("max_tokens over limit", {**GOOD, "max_tokens": 100_000}),
    ("context too long", {**GOOD, "messages": [{"role": "user", "content": "aspirin " * 3000}]}),
    ("huge prompt", HUGE),
    ("unknown model", {**GOOD, "model": "nope"}),
    ("empty messages", {**GOOD, "messages": []}),
    ("not json", b"{not json"),
    ("lone surrogate", b'{"model": "policy", "messages": [{"role": "user", "content": "a\\ud800"}]}'),
    ("top_p 0", {**GOOD, "top_p": 0}),
    ("seed huge", {**GOOD, "seed": 2**70}),
]


def _post(url: str, body, timeout: float = 120) -> tuple[int, float, dict]:
    import httpx

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    t0 = time.perf_counter()
    r = httpx.post(url + "/chat/completions", content=raw, headers={"content-type": "application/json"},
                   timeout=timeout)
    try:
        payload = r.json()
    except ValueError:
        payload = {"raw": r.text[:200]}
    return r.status_code, time.perf_counter() - t0, payload


def truncated_body(base_url: str) -> tuple[int | None, float]:
    """Headers promise 1,000 bytes, 10 arrive: the status line and how long it took."""
    url = urlsplit(base_url)
    t0 = time.perf_counter()
    with socket.create_connection((url.hostname, url.port), timeout=60) as s:
        s.sendall((f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: 1000\r\n\r\n{\"model\": ").encode())
        head = s.recv(4096).decode(errors="replace")
    status = int(head.split()[1]) if head.startswith("HTTP/") else None
    return status, time.perf_counter() - t0


def mixed(base_url: str, repeats: int) -> dict:
    todo = [(what, body, False) for what, body in BAD] * repeats + [("valid", GOOD, True)] * (len(BAD) * repeats)
    todo = [todo[i] for i in sorted(range(len(todo)), key=lambda i: (i * 7919) % len(todo))]  # interleaved
    with cf.ThreadPoolExecutor(16) as pool:
        out = list(pool.map(lambda t: (t[0], t[2], _post(base_url, t[1])), todo))
    findings = [f"{what}: {status} {json.dumps(payload)[:160]}" for what, valid, (status, _, payload) in out
                if status >= 500 or (valid and status != 200) or (not valid and status < 400)
                or (not valid and set(payload.get("error", {})) != {"message", "type", "param", "code"})]
    return {"requests": len(out), "5xx": sum(s >= 500 for _, _, (s, _, _) in out),
            "valid_ok": sum(v and s == 200 for _, v, (s, _, _) in out), "valid": sum(v for _, v, _ in out),
            "findings": findings}


def _huge_body(kind: str) -> bytes:
    # "too_long": valid JSON whose prompt is far over the context (413 from its size, or 400 context_length_exceeded);
    # "not_json": as many bytes that are not JSON (refused by size as well, or read in full and refused: then
    # what receiving 8 MB costs)
    return json.dumps(HUGE).encode() if kind == "too_long" else b"{" + b"x" * len(json.dumps(HUGE))


def _post_huge(base_url: str, kind: str) -> int:
    """POST a huge body with the standard library's client (as lean as a C client such as curl: on a 2-core machine
    the clients' own CPU use would otherwise be most of what is measured); the status."""
    import http.client

    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request("POST", url.path + "/chat/completions", body=_huge_body(kind),
                     headers={"content-type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def head_of_line(base_url: str, n: int = 8) -> dict:
    """A valid request's latency alone, beside 8 prompts of ~990 KB, and beside 8 bodies as large that are not
    JSON (receiving 8 MB on the same CPUs, when they are read). The huge ones come from other processes (other clients, in
    life): encoding and sending 8 MB in this process would slow the timed request's own client."""
    import multiprocessing

    alone = [_post(base_url, GOOD)[1] for _ in range(n)]
    beside: dict[str, list[float]] = {"too_long": [], "not_json": []}
    refused: dict[str, list[int]] = {"too_long": [], "not_json": []}
    with cf.ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as clients:
        list(clients.map(abs, range(64)))  # the client processes are up before any timing
        for _ in range(n):
            for kind, times in beside.items():
                huge = [clients.submit(_post_huge, base_url, kind) for _ in range(8)]
                time.sleep(0.05)  # the huge bodies are on their way
                times.append(_post(base_url, GOOD)[1])
                refused[kind] += [f.result() for f in huge]
                assert all(s in (400, 413) for s in refused[kind]), (kind, refused[kind])
    a, b, floor = (statistics.median(x) for x in (alone, beside["too_long"], beside["not_json"]))
    return {"alone_ms": round(a * 1000, 1), "beside_huge_ms": round(b * 1000, 1), "ratio": round(b / a, 2),
            "beside_not_json_ms": round(floor * 1000, 1), "ratio_to_not_json": round(b / floor, 2),
            "huge_statuses": {kind: {str(c): v.count(c) for c in sorted(set(v))} for kind, v in refused.items()}}


def stream_equality(base_url: str, n: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)
    differ = 0
    for i in range(n):
        msgs = [{"role": "user", "content": f"Question {i}: tell me about compound {i} ({'é' * (i % 3)})"}]
        kw = {"model": "policy", "messages": msgs, "max_tokens": 24, "temperature": 0}
        full = client.chat.completions.create(**kw).choices[0].message.content
        chunks = client.chat.completions.create(**kw, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        differ += streamed != full
    return {"prompts": n, "differ": differ}


def probe_path(cfg, path: str, repeats: int, n_stream: int) -> dict:
    from libra_ray.serve import serving

    cfg = with_serve_path(cfg, path)
    t0 = time.perf_counter()
    with serving(cfg) as app:
        ready = round(time.perf_counter() - t0, 1)
        print(f"[{path}] ready in {ready} s", flush=True)
        res = {"ready_s": ready, "mixed": mixed(app.base_url, repeats)}
        print(f"[{path}] mixed: {json.dumps(res['mixed'])[:600]}", flush=True)
        status, took = truncated_body(app.base_url)
        res["truncated_body"] = {"status": status, "seconds": round(took, 1)}
        res["head_of_line"] = head_of_line(app.base_url)
        print(f"[{path}] head of line: {res['head_of_line']}", flush=True)
        res["stream_equality"] = stream_equality(app.base_url, n_stream)
        print(f"[{path}] stream equality: {res['stream_equality']}", flush=True)
    return res


def markdown(results: dict) -> str:
    rows = ["| path | requests (bad+valid) | 5xx | valid answered | findings | truncated body | valid alone ms | "
            "beside 8 huge ms | huge refused as | ratio | beside 8 MB not JSON ms | huge / not JSON | "
            "streamed != non-streamed |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path, r in results["paths"].items():
        m, h, s, t = r["mixed"], r["head_of_line"], r["stream_equality"], r["truncated_body"]
        rows.append(f"| {path} | {m['requests']} | {m['5xx']} | {m['valid_ok']}/{m['valid']} | {len(m['findings'])} | "
                    f"{t['status']} in {t['seconds']} s | {h['alone_ms']} | {h['beside_huge_ms']} | "
                    f"{', '.join(f'{c} x{n}' for c, n in h['huge_statuses']['too_long'].items())} | {h['ratio']} | "
                    f"{h['beside_not_json_ms']} | {h['ratio_to_not_json']} | "
                    f"{s['differ']}/{s['prompts']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=list(SERVE_PATHS),
                        choices=SERVE_PATHS)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--dtype", default="float32", help="vLLM dtype (float32 = as the transformers engine)")
    parser.add_argument("--out", default=None, help="result JSON (default: results/serve_probe.json)")
    add_smoke_arg(parser)
    args = parser.parse_args(argv)
    out = result_path(args.out, "serve_probe", args.smoke)
    stamp = print_stamp("serve_probe")
    set_offline_env()
    from libra_ray.config import load_config
    from libra_ray.runtime import ray_session

    cfg = load_config(None, ["ray.num_cpus=2", "serve.port=0", f"serve.policy.path={args.model}",
                             "serve.policy.num_cpus=0.5", "serve.judge.num_cpus=0.25", f"serve.policy.dtype={args.dtype}",
                             "serve.policy.autoscaling.max_replicas=1", "serve.judge.autoscaling.max_replicas=1",
                             f"cache_dir={ROOT / '.cache' / 'libra_ray'}", "storage=/tmp/libra_ray_serve_probe"])
    results: dict = {"stamp": stamp, "model": args.model, "dtype": args.dtype, "paths": {}}
    with ray_session(cfg):
        for path in args.paths:
            results["paths"][path] = probe_path(cfg, path, repeats=1 if args.smoke else 2,
                                                n_stream=4 if args.smoke else 40)
    out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))
    print_stamp("serve_probe", "end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
