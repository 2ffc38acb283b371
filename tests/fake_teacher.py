"""An OpenAI-compatible fake teacher endpoint for tests and the `tiny` DVC profile (standard library only).

In tests:

    with FakeTeacherServer(lambda messages: "hi", fail_first=2) as server:
        OpenAITeacher(server.base_url, "fake-teacher").generate(...)
        assert server.requests == 3

`reply_fn` may return None (sent as `"content": null`) or raise `ErrorReply(status, message)` to answer that
one request with an error body.

From the command line (the lead's end-to-end tests start it as a subprocess, serving forever):

    python tests/fake_teacher.py --port 8765 [--delay 0.05]

`scripted_dialogue_reply` answers a whole-dialogue prompt (one mentioning "N turns" or "N-turn", and
naming the speakers as "between X and Y") with a valid N-turn dialogue, and any other prompt with one
short utterance; replies are deterministic functions of the chat.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

_WORDS = ("walk", "river", "music", "work", "friends", "coffee", "weekend", "journal", "tired", "happy", "rain",
          "plans", "book", "garden", "city", "morning")


def _pick(seed: bytes, n: int) -> list[str]:
    digest = hashlib.sha256(seed).digest()
    return [_WORDS[b % len(_WORDS)] for b in digest[:n]]


def _utterance(seed: bytes, i: int) -> str:
    a, b, c = _pick(seed + str(i).encode(), 3)
    return f"I keep thinking about {a}, {b} and {c} lately."  # 9 words, well under the 20-word cap


_TRAIT_NAMES = ("Openness", "Conscientiousness", "Extraversion", "Agreeableness", "Neuroticism")


def _trait_labels(prompt: str) -> str:
    """Five valid PersonalityChat labels for a persona-labelling prompt: two traits cite the first fact."""
    facts = [line[2:].strip() for line in prompt.splitlines() if line.startswith("- ")]
    answers = ["No clues."] * 5
    if facts:
        answers[1] = f'Probably high, given "{facts[0]}"'
        answers[3] = f'Probably low, given "{facts[-1]}"'
    return "\n".join(f"{name}: {answer}" for name, answer in zip(_TRAIT_NAMES, answers))


def _dpg_assessment(seed: bytes) -> str:
    """A valid DPG assessment: JSON with an analysis and an integer result in [-5, 5], fixed by the prompt."""
    score = hashlib.sha256(seed).digest()[0] % 11 - 5
    return json.dumps({"analysis": "The character's lines show this on some facets.", "result": score})


def _pchat_dialogue(prompt: str, seed: bytes) -> str | None:
    """A valid dialogue for a PersonalityChat whole-dialogue prompt ("between M and N utterances"), else None."""
    counts = re.findall(r"between (\d+) and (\d+) utterances", prompt)
    names = re.findall(r'as "(\w+): \.\.\." and "(\w+): \.\.\."', prompt)
    if not counts or not names:
        return None
    n_turns, (a, b) = int(counts[-1][1]), names[-1]
    return "\n".join(f"{(a, b)[i % 2]}: {_utterance(seed, i)}" for i in range(n_turns))


_PERSLLM_FRAMES = {
    "question": ("What did you feel about the {0} and the {1} when {2} came up?",
                 "Why did the {0} matter so much to you, and what about the {1}?",
                 "How do you remember the {0}, the {1} and the {2} now?"),
    "error": ("Why did you throw the {0} into the lake after the {1} ended?",
              "Was it you who sold the {0} to the {1} for a {2}?"),
    "thought": ("I think the {0} mattered more than the {1} that day.",
                "Honestly, the {0} and the {2} were handled badly by everyone."),
}


def _persllm_reply(messages: list[dict], first: str, seed: bytes) -> str | None:
    """PersLLM's annotation prompts: an input of the asked type, or an answer in the [Analysis] [Response] form."""
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    words = _pick(seed, 4)
    if "[Response]" in system and "Now it's" in system:
        return (f"[Analysis] I remember the {words[0]} and the {words[1]}; it still matters to me. "
                f"[Response] Well, the {words[2]} was what counted, and the {words[3]} too.")
    for kind, marker in (("error", "deliberate mistake"), ("question", "Write one question"),
                         ("thought", "Write one opinion")):
        if marker in first:
            frames = _PERSLLM_FRAMES[kind]
            return frames[seed[0] % len(frames)].format(*words)
    return None


def scripted_dialogue_reply(messages: list[dict]) -> str:
    """A valid reply for every teacher prompt of the pipeline; deterministic in `messages`.

    JIC's whole-dialogue prompt gets a dialogue of the asked turns, PersonalityChat's persona-labelling prompt five
    valid labels and its dialogue prompt a dialogue of the most utterances allowed, DPG's assessment prompt a JSON
    score, PersLLM's input prompts an input of the asked type and its answer prompt an [Analysis] [Response] answer;
    anything else one short utterance.
    """
    seed = json.dumps(messages, sort_keys=True).encode()
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    first = users[0] if users else ""
    if "Big Five personality traits" in first and "No clues" in first:
        return _trait_labels(first)
    if "psychologist" in first and '"result"' in first:
        return _dpg_assessment(seed)
    persllm = _persllm_reply(messages, first, hashlib.sha256(seed).digest())
    if persllm is not None:
        return persllm
    pchat = _pchat_dialogue(first, seed)
    if pchat is not None:
        return pchat
    # The instruction follows the journals, so its mentions are the last ones in the prompt.
    counts = re.findall(r"\b(\d+)[\s-]+turns?\b", first)
    if not counts:
        return _utterance(seed, 0)
    n_turns = int(counts[-1])
    names = re.findall(r"between\s+(\S+?)\s+and\s+(\S+?)[\s.,:;]", first)
    a, b = names[-1] if names else ("A", "B")
    return "\n".join(f"{(a, b)[i % 2]}: {_utterance(seed, i)}" for i in range(n_turns))


class ErrorReply(Exception):
    """Raised by a `reply_fn` to answer with `status` and an OpenAI-style error body (with 200: a malformed reply)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class FakeTeacherServer:
    """A /v1/chat/completions endpoint on 127.0.0.1 in a background thread, answering with `reply_fn(messages)`."""

    def __init__(self, reply_fn: Callable[[list[dict]], str | None] = scripted_dialogue_reply,
                 required_key: str | None = None, delay_s: float = 0.0, fail_first: int = 0, port: int = 0,
                 model: str = "fake-teacher", served_models: list[str] | None = None):
        self.reply_fn = reply_fn
        # As `vllm serve`: GET /v1/models lists these, and a request naming another model is a 404 (None: any name).
        self.served_models = served_models
        self.payloads: list[dict] = []  # every parsed request body, in arrival order
        self.required_key = required_key
        self.delay_s = delay_s
        self.fail_first = fail_first
        self.model = model
        self.requests = 0           # every POST received, including the ones answered 429 or 401
        self.in_flight = 0
        self.max_in_flight = 0      # most requests handled at once, to check client-side concurrency limits
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if server.required_key is not None and \
                        self.headers.get("Authorization") != f"Bearer {server.required_key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                names = server.served_models if server.served_models is not None else [server.model]
                return self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with server._lock:
                    server.requests += 1
                    n = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth_headers.append(self.headers.get("Authorization"))
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if self.path.rstrip("/") != "/v1/chat/completions":
                        return self._send(404, {"error": {"message": f"no route {self.path}"}})
                    if server.required_key is not None and \
                            self.headers.get("Authorization") != f"Bearer {server.required_key}":
                        return self._send(401, {"error": {"message": "invalid api key"}})
                    if n <= server.fail_first:
                        return self._send(429, {"error": {"message": "rate limited"}})
                    try:
                        payload = json.loads(body)
                        messages = payload["messages"]
                    except (ValueError, KeyError, TypeError):
                        return self._send(400, {"error": {"message": "body needs 'messages'"}})
                    with server._lock:
                        server.payloads.append(payload)
                    if server.served_models is not None and payload.get("model") not in server.served_models:
                        return self._send(404, {"error": {"message": f"The model `{payload.get('model')}` does "
                                                                     "not exist."}})
                    try:
                        content = server.reply_fn(messages)
                    except ErrorReply as exc:
                        return self._send(exc.status, {"error": {"message": exc.message}})
                    return self._send(200, {"id": f"fake-{n}", "object": "chat.completion", "model": server.model,
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": content}}]})
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler

    def start(self) -> Self:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    """Serve `scripted_dialogue_reply` forever on the given port."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    args = parser.parse_args()
    server = FakeTeacherServer(scripted_dialogue_reply, delay_s=args.delay, port=args.port)
    print(f"fake teacher serving on {server.base_url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
