"""The OpenAI-compatible chat backend (OpenAI SDK) against a real HTTP server on 127.0.0.1 started here: Retry-After
in seconds and as an HTTP date, 5xx retries, malformed answers, timeouts, and which credentials are sent."""

from __future__ import annotations

import email.utils
import http.server
import json
import math
import threading
import time

import pytest

from humove.language.clients import ChatBackendError, GenerationSettings, OpenAIChatBackend

MESSAGES = [{"role": "user", "content": "hello"}]


def completion(text: str) -> tuple[int, dict, bytes]:
    body = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
    return 200, {"Content-Type": "application/json"}, body


class ChatEndpoint:
    """`POST /v1/chat/completions` answering from a script: each request takes the next (status, headers, body),
    or a function giving one when the request comes, or a number of seconds to stall before answering; then a
    completion of "ok" for good. Records the times and headers of the requests it got."""

    def __init__(self, script: list):
        self.script = list(script)
        self.times: list[float] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.times.append(time.monotonic())
                outer.headers.append(dict(self.headers))
                step = outer.script.pop(0) if outer.script else completion("ok")
                if isinstance(step, int | float):
                    time.sleep(step)
                    step = completion("late")
                elif callable(step):
                    step = step()
                status, headers, body = step
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def waits(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoint(monkeypatch):
    """Start an endpoint with a script and point HUMOVE_LLM_BASE_URL at it; no key unless a test sets one."""
    started = []
    monkeypatch.delenv("HUMOVE_LLM_API_KEY", raising=False)

    def start(*script) -> ChatEndpoint:
        server = ChatEndpoint(list(script))
        started.append(server)
        monkeypatch.setenv("HUMOVE_LLM_BASE_URL", server.base)
        return server

    yield start
    for server in started:
        server.close()


def backend(**options) -> OpenAIChatBackend:
    return OpenAIChatBackend("m", GenerationSettings(), **options)


def test_a_429_waits_for_retry_after_in_seconds(endpoint):
    server = endpoint((429, {"Retry-After": "1"}, b"slow down"))
    (result,) = backend().generate([MESSAGES])
    assert (result.text, result.prompt_tokens, result.output_tokens) == ("ok", 3, 2)
    assert len(server.times) == 2 and server.waits()[0] >= 0.95  # the SDK's own first backoff is ≤ 0.5 s


def test_a_429_waits_for_retry_after_as_an_http_date(endpoint):
    # HTTP dates have whole seconds: the next whole second + 2 is at least 2 s ahead, longer than any first backoff
    # (the SDK's is ≤ 0.5 s; the hand-written client this replaced waited 1 s, ignoring dates).
    server = endpoint(lambda: (429, {"Retry-After": email.utils.formatdate(math.ceil(time.time()) + 2,
                                                                           usegmt=True)}, b""))
    assert backend().generate([MESSAGES])[0].text == "ok"
    assert len(server.times) == 2 and server.waits()[0] >= 1.9


def test_a_503_is_retried_and_the_last_one_named_when_retries_run_out(endpoint):
    server = endpoint((503, {}, b"overloaded"))
    assert backend().generate([MESSAGES])[0].text == "ok" and len(server.times) == 2

    server = endpoint(*[(503, {}, b"still overloaded")] * 3)
    with pytest.raises(ChatBackendError, match=r"answered HTTP 503 \(retried up to 1 times\): 'still overloaded'"):
        backend(max_retries=1).generate([MESSAGES])
    assert len(server.times) == 2


def test_a_malformed_answer_is_an_error_naming_the_endpoint_and_is_not_retried(endpoint):
    for answer in ((200, {"Content-Type": "text/html"}, b"<html>proxy login</html>"),
                   (200, {"Content-Type": "application/json"}, b'{"result": "no choices here"}'),
                   (200, {"Content-Type": "application/json"}, b'{"choices": []}')):
        server = endpoint(answer)
        with pytest.raises(ChatBackendError, match=rf"{server.base}/chat/completions did not answer a chat "
                                                   "completion"):
            backend().generate([MESSAGES])
        assert len(server.times) == 1


def test_a_client_error_is_not_retried(endpoint):
    server = endpoint((400, {"Content-Type": "application/json"}, b'{"error": {"message": "bad model"}}'))
    with pytest.raises(ChatBackendError, match=r"answered HTTP 400: .*bad model"):
        backend().generate([MESSAGES])
    assert len(server.times) == 1


def test_a_stalled_endpoint_times_out_after_its_retries(endpoint):
    server = endpoint(1.0, 1.0)
    with pytest.raises(ChatBackendError, match=r"failed 2 times, last: Request timed out"):
        backend(timeout_s=0.2, max_retries=1).generate([MESSAGES])
    assert len(server.times) == 2


def test_only_the_named_key_is_sent_never_the_sdks_own_variables(endpoint, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-openai-key")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-ambient")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-ambient")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # would fail: the named base URL is used
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer sk-ambient-header\nX-Gateway: ambient-tok")
    server = endpoint()
    backend().generate([MESSAGES])
    monkeypatch.setenv("HUMOVE_LLM_API_KEY", "sk-named")
    backend().generate([MESSAGES])
    sent = [{k.lower(): v for k, v in h.items()} for h in server.headers]
    assert "authorization" not in sent[0] and sent[1]["authorization"] == "Bearer sk-named"
    assert not any("ambient" in value for headers in sent for value in headers.values())
