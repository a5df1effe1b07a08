"""A small HTTP load generator for the gateway benchmark: one process, aiohttp, keep-alive connections.

Run: `python -m bench.loadgen --url URL --key K --model M --concurrency 32 --duration 8` (or `--requests 2000`).
Each of `concurrency` workers sends the same non-streaming chat completion in a loop on its own kept-alive
connection; after the warm-up the per-request latency is kept. Prints one JSON line: p50/p99 in ms, requests/s,
errors, and how many requests were sent in all (warm-up included), so the caller can match usage records.
It runs in its own process so that it shares no interpreter lock with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson
import uvloop

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence, please."}]


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _load(args: argparse.Namespace) -> dict:
    body = orjson.dumps({"model": args.model, "messages": MESSAGES, "max_tokens": 16})
    headers = {"content-type": "application/json", "authorization": f"Bearer {args.key}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    latencies: list[float] = []
    state = {"sent": 0, "errors": 0, "first_error": ""}

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(keep: bool) -> None:
            state["sent"] += 1
            started = time.perf_counter()
            try:
                async with session.post(args.url, data=body) as response:
                    payload = await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError as exc:
                ok, payload = False, repr(exc).encode()
            elapsed = time.perf_counter() - started
            if not ok:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or payload[:300].decode(errors="replace")
            elif keep:
                latencies.append(elapsed)

        async def worker(deadline: float, quota: int | None, keep: bool) -> None:
            done = 0
            while time.perf_counter() < deadline and (quota is None or done < quota):
                await one(keep)
                done += 1

        warm_per_worker = max(1, args.warmup // args.concurrency)
        await asyncio.gather(*(worker(float("inf"), warm_per_worker, False) for _ in range(args.concurrency)))
        quota = None if args.requests is None else max(1, args.requests // args.concurrency)
        deadline = time.perf_counter() + (args.duration if args.duration else float("inf"))
        started = time.perf_counter()
        await asyncio.gather(*(worker(deadline, quota, True) for _ in range(args.concurrency)))
        wall = time.perf_counter() - started

    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "sent": state["sent"],
        "errors": state["errors"],
        "first_error": state["first_error"],
        "seconds": round(wall, 2),
        "rps": round(len(ordered) / wall, 1) if wall else 0.0,
        "p50_ms": round(_percentile(ordered, 0.50) * 1000, 3) if ordered else None,
        "p99_ms": round(_percentile(ordered, 0.99) * 1000, 3) if ordered else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the chat-completions URL")
    parser.add_argument("--key", default="")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, help="measured requests (split over the workers)")
    parser.add_argument("--duration", type=float, help="or: measure for this many seconds")
    parser.add_argument("--warmup", type=int, default=200, help="requests sent first and not measured")
    args = parser.parse_args()
    if args.requests is None and args.duration is None:
        parser.error("give --requests or --duration")
    sys.stdout.write(orjson.dumps(uvloop.run(_load(args))).decode() + "\n")


if __name__ == "__main__":
    main()
