"""A minimal OpenAI-compatible upstream that answers at once, so a benchmark measures the gateway, not a model.

Run: `python -m bench.upstream --port 9100` (uvicorn, raw ASGI). Chat completions (also streamed in a few
chunks), completions, embeddings and /v1/models; every answer carries usage. With `--key K` it demands that
bearer key, like a provider would. Tests also use it as an external upstream.
"""

from __future__ import annotations

import argparse
import time

import orjson

ANSWER = "Hello from the upstream."
WORDS = ["Hello", " from", " the", " upstream."]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _prompt_tokens(body: dict) -> int:
    text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    text += str(body.get("prompt", "")) + str(body.get("input", ""))
    return max(1, len(text.split()))


class Upstream:
    def __init__(self, key: str = ""):
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.key and dict(scope["headers"]).get(b"authorization", b"") != b"Bearer " + self.key:
            return await self._json(send, 401, {"error": {"message": "bad key", "type": "auth", "code": "invalid"}})
        path = scope["path"]
        if not path.startswith("/v1/") or path.startswith("/v1/v1/"):  # like a provider: only its own routes
            return await self._json(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
        if path.endswith("/models"):
            return await self._json(
                send,
                200,
                {"object": "list", "data": [{"id": "echo-1", "object": "model", "owned_by": "bench", "created": 0}]},
            )
        try:
            request = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return await self._json(send, 400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
        model = request.get("model", "echo-1")
        prompt_tokens = _prompt_tokens(request)
        created = int(time.time())
        if path.endswith("/embeddings"):
            inputs = request.get("input")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
            return await self._json(
                send, 200, {"object": "list", "data": data, "model": model, "usage": _usage(prompt_tokens, 0)}
            )
        chat = path.endswith("/chat/completions")
        if request.get("stream"):
            return await self._stream(send, request, model, created, chat, prompt_tokens)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": ANSWER, "finish_reason": "stop"}
            kind = "text_completion"
        await self._json(
            send,
            200,
            {
                "id": "cmpl-bench",
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": _usage(prompt_tokens, len(WORDS)),
            },
        )

    async def _stream(self, send, request, model, created, chat, prompt_tokens):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        kind = "chat.completion.chunk" if chat else "text_completion"
        for word in WORDS:
            choice = (
                {"index": 0, "delta": {"content": word}, "finish_reason": None}
                if chat
                else {"index": 0, "text": word, "finish_reason": None}
            )
            chunk = {"id": "cmpl-bench", "object": kind, "created": created, "model": model, "choices": [choice]}
            await send(
                {"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True}
            )
        if (request.get("stream_options") or {}).get("include_usage"):
            chunk = {
                "id": "cmpl-bench",
                "object": kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(prompt_tokens, len(WORDS)),
            }
            await send(
                {"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _json(self, send, status: int, payload: dict):
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="")
    args = parser.parse_args()
    uvicorn.run(
        Upstream(args.key),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
