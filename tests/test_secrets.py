"""No secret on disk: URL credentials are masked wherever text is written, `secret()` config fields are redacted and
left out of fingerprints, and the LLM client never quotes its endpoint's password or key. (The download stage's
end-to-end check, a proxy password and a listed URL's password through a whole CLI run, is in test_download.py.)"""

from __future__ import annotations

import http.server
import threading

import pytest

from humove.language.clients import ChatBackendError, GenerationSettings, OpenAIChatBackend
from humove.redact import redact_text
from humove.stage import StageConfig, decision, secret


def test_redact_text_masks_every_password_in_urls():
    assert redact_text("http://u:p@h:1/x and socks5://a:b@c@d/ and https://tok@e/") == \
        "http://u:***@h:1/x and socks5://a:***@d/ and https://***@e/"
    assert redact_text("see http://host/path?a=b@c, mail a@b") == "see http://host/path?a=b@c, mail a@b"


class WithSecrets(StageConfig):
    endpoint: str = "https://example.com/search"
    token: str | None = secret(None, "an access token")
    proxy: str | None = secret(None, "a proxy URL")
    options: dict = {}
    threshold: float = decision(0.5)


def test_secret_fields_are_redacted_and_left_out_of_the_fingerprint():
    one = WithSecrets(token="tok-ONE", proxy="http://me:pw-ONE@proxy:3128", endpoint="https://me:ep-ONE@host/q",
                      options={"mirrors": ["ftp://me:opt-ONE@mirror/"]})
    two = WithSecrets(token="tok-TWO", proxy="http://me:pw-TWO@proxy:3128", endpoint="https://me:ep-TWO@host/q",
                      options={"mirrors": ["ftp://me:opt-TWO@mirror/"]})
    assert one.fingerprint_dict() == two.fingerprint_dict()
    assert "token" not in one.fingerprint_dict() and "proxy" not in one.fingerprint_dict()
    shown = one.redacted_dict()
    assert shown == {"token": "***", "proxy": "http://me:***@proxy:3128", "endpoint": "https://me:***@host/q",
                     "options": {"mirrors": ["ftp://me:***@mirror/"]}, "threshold": 0.5}
    assert WithSecrets(endpoint="https://other/q").fingerprint_dict() != one.fingerprint_dict()


def test_an_llm_base_url_with_credentials_is_refused_without_quoting_them(monkeypatch):
    monkeypatch.setenv("HUMOVE_LLM_BASE_URL", "http://user:Pw123@127.0.0.1/v1")
    with pytest.raises(ChatBackendError) as info:
        OpenAIChatBackend("m", GenerationSettings(), max_retries=0).generate([[{"role": "user", "content": "x"}]])
    assert "Pw123" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)


def test_an_api_key_echoed_by_the_server_is_masked_in_the_error(monkeypatch):
    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = f"bad request, you sent {self.headers.get('Authorization')}".encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HUMOVE_LLM_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
        monkeypatch.setenv("HUMOVE_LLM_API_KEY", "sk-SECRET-123")
        with pytest.raises(ChatBackendError) as info:
            OpenAIChatBackend("m", GenerationSettings(), max_retries=0).generate([[{"role": "user", "content": "x"}]])
    finally:
        server.shutdown()
        server.server_close()
    assert "HTTP 400" in str(info.value) and "Bearer ***" in str(info.value)
    assert "sk-SECRET-123" not in str(info.value)
