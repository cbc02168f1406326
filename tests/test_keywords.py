"""`keywords`: the taxonomy, the paper's prompt, parsing and normalisation, the template backend, and the LLM
backends' real code paths (an OpenAI-compatible server on 127.0.0.1 started by the test, a tiny random-weight
transformers model built in code; vLLM only through its import guard)."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest
import yaml

from bench.random_models import keyword_lm
from humove.config import load_pipeline
from humove.engine import Runner
from humove.language.clients import ChatBackendError, GenerationSettings, TransformersChatBackend, VLLMChatBackend
from humove.language.keywords import (
    SYSTEM_PROMPT,
    KeywordOutputError,
    keyword_messages,
    normalise_keyword,
    parse_keywords,
    prompt_hash,
    template_keywords,
)
from humove.language.taxonomy import TaxonomyError, load_taxonomy
from humove.ledger import Ledger
from humove.stage import StageContext
from humove.stages.keywords import KeywordsConfig, KeywordsStage

TAXONOMY = load_taxonomy()
COMBAT = TAXONOMY.category("Combat Sports")


def test_builtin_taxonomy_is_the_papers_table_2():
    assert [c.name for c in TAXONOMY.categories] == [
        "Urban & Outdoor", "Water Sports", "Athletics & Fitness", "Ball Sports", "Combat Sports",
        "Dance & Artistic", "Gymnastics & Acrobatics", "Ice & Snow Sports", "General & Others"]
    assert COMBAT.fine == ["Boxing", "Judo", "MMA", "Taekwondo", "Wrestling", "Wushu"]
    assert sum(len(c.fine) for c in TAXONOMY.categories) == 38


def test_taxonomy_errors_name_the_file(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("categories: [{name: A, fine: [X], aliases: {Y: [y]}}]")
    with pytest.raises(TaxonomyError, match="t.yaml.*unknown fine categories"):
        load_taxonomy(str(bad))
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_taxonomy(str(tmp_path / "missing.yaml"))


def test_prompt_keeps_the_papers_wording_for_one_category():
    system, user = keyword_messages(COMBAT, 25)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    text = user["content"]
    assert "generate a list of 25 search terms" in text and "- boxing training drills 4k" in text
    assert "following list of major categories:\n- Combat Sports" in text and "Wushu" in text


def test_parse_json_answer_normalises_dedups_and_validates_fine_categories():
    answer = ('Sure!\n```json\n{"keywords": [{"keyword": "  Boxing  Training Drills 4K ", "fine_category": "boxing"},'
              '{"keyword": "boxing training drills 4k", "fine_category": "Boxing"},'
              '{"keyword": "\\"cinematic taekwondo high kick\\"", "fine_category": "Karate"},'
              '{"keyword": "", "fine_category": "Judo"}]}\n```')
    keywords = parse_keywords(answer, COMBAT, 10)
    assert [(k.text, k.fine_category, k.rank) for k in keywords] == [
        ("boxing training drills 4k", "Boxing", 0), ("cinematic taekwondo high kick", "Taekwondo", 1)]


def test_parse_accepts_the_papers_bullet_list_and_matches_aliases():
    answer = ("**Desired Output Keywords:**\n- MMA sparring session slow motion\n2. female wrestler practice\n"
              "* kung fu form")
    keywords = parse_keywords(answer, COMBAT, 2)
    assert [(k.text, k.fine_category) for k in keywords] == [
        ("mma sparring session slow motion", "MMA"), ("female wrestler practice", "Wrestling")]


def test_parse_rejects_answers_without_keywords():
    with pytest.raises(KeywordOutputError, match="Combat Sports"):
        parse_keywords("I cannot help with that.", COMBAT, 5)


def test_normalise_keyword():
    assert normalise_keyword("  1) “Judo  Throw”  ") == "judo throw"
    assert normalise_keyword("- **Wushu** performance") == "wushu performance"


def test_template_covers_every_fine_category_before_repeating_and_is_deterministic():
    keywords = template_keywords(COMBAT, TAXONOMY, 14)
    assert [k.fine_category for k in keywords[:6]] == COMBAT.fine
    assert len({k.text for k in keywords}) == 14 and keywords == template_keywords(COMBAT, TAXONOMY, 14)
    assert keywords[6].text == "boxing training session"


def _pipeline(tmp_path, config: dict) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "run": {"executor": "local", "max_attempts": 2},
                                    "stages": [{"stage": "keywords", "config": config}]}))
    return str(path)


def test_template_stage_through_the_engine(tmp_path):
    config, stages = load_pipeline(_pipeline(tmp_path, {"backend": "template", "keywords_per_category": 20}))
    run_dir = str(tmp_path / "run")
    Runner(config, stages, run_dir).run()
    rows = Ledger(run_dir).current()["keywords"].to_pylist()
    per_category = {}
    for row in rows:
        per_category.setdefault(row["keyword_category"], []).append(row)
    # A category with two fine categories has 2 × (1 + 8 modifiers) = 18 template keywords.
    assert {k: len(v) for k, v in per_category.items()} == {
        c.name: min(20, len(c.fine) * (1 + len(TAXONOMY.modifiers))) for c in TAXONOMY.categories}
    assert {r["backend"] for r in rows} == {"template"} and all(r["keyword_prompt_hash"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


class ChatServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1: answers from `answers(messages)`, first
    `fail_first` requests with 429 + Retry-After 0. Records request bodies and Authorization headers."""

    def __init__(self, answers, fail_first: int = 0):
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.fail_first = fail_first
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.auth.append(self.headers.get("Authorization"))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                text = answers(body["messages"])
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                                      "usage": {"prompt_tokens": 11, "completion_tokens": 7}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _json_answer(messages) -> str:
    category = messages[1]["content"].split("major categories:\n- ", 1)[1].split("\n", 1)[0]
    fine = TAXONOMY.category(category).fine
    if messages[-1]["role"] == "user" and "could not be used" in messages[-1]["content"]:
        return json.dumps({"keywords": [{"keyword": f"{f} highlights", "fine_category": f} for f in fine]})
    if category == "Ball Sports":
        return "no idea"  # malformed once: the stage asks again
    return json.dumps({"keywords": [{"keyword": f"{f} slow motion", "fine_category": f} for f in fine]})


def test_openai_endpoint_backend_retries_429_asks_again_once_and_keeps_the_key_out_of_the_run_dir(
        tmp_path, monkeypatch):
    server = ChatServer(_json_answer, fail_first=1)
    secret = "sk-test-secret-0123456789"
    monkeypatch.setenv("HUMOVE_LLM_BASE_URL", server.base)
    monkeypatch.setenv("HUMOVE_LLM_API_KEY", secret)
    try:
        config, stages = load_pipeline(_pipeline(tmp_path, {
            "backend": "openai", "model": "served-model", "categories": ["Combat Sports", "Ball Sports"],
            "keywords_per_category": 5}))
        run_dir = tmp_path / "run"
        Runner(config, stages, str(run_dir)).run()
    finally:
        server.close()
    rows = sorted(Ledger(str(run_dir)).current()["keywords"].to_pylist(), key=lambda r: r["keyword_rank"])
    combat = [r for r in rows if r["keyword_category"] == "Combat Sports"]
    ball = [r for r in rows if r["keyword_category"] == "Ball Sports"]
    assert [r["keyword_text"] for r in combat] == ["boxing slow motion", "judo slow motion", "mma slow motion",
                                                   "taekwondo slow motion", "wrestling slow motion"]
    assert [r["keyword_fine_category"] for r in ball] == ["Basketball", "Golf", "Soccer", "Tennis", "Volleyball"]
    assert {(r["backend"], r["keyword_model"], r["keyword_temperature"]) for r in rows} == {
        ("openai", "served-model", 0.0)}
    settings = GenerationSettings().model_dump()  # the stage's defaults: temperature 0, seed 0
    for rows_of, name in ((combat, "Combat Sports"), (ball, "Ball Sports")):  # Ball Sports needed the retry
        assert {r["keyword_prompt_hash"] for r in rows_of} == {
            prompt_hash(keyword_messages(TAXONOMY.category(name), 5), settings)}
    assert all(body["temperature"] == 0.0 and body["seed"] == 0 for body in server.requests)
    assert len(server.requests) == 4  # one 429 sent again, two categories, one repair request for Ball Sports
    assert set(server.auth) == {f"Bearer {secret}"}
    for folder, _, files in os.walk(run_dir):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                data = handle.read()
            assert secret.encode() not in data and server.base.encode() not in data, name


def test_openai_backend_needs_its_base_url_env(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMOVE_LLM_BASE_URL", raising=False)
    stage = KeywordsStage(KeywordsConfig(backend="openai"), StageContext(str(tmp_path), "keywords"))
    with pytest.raises(ChatBackendError, match="HUMOVE_LLM_BASE_URL"):
        stage.setup()


def test_vllm_backend_says_how_to_get_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ChatBackendError, match="gpu"):
            VLLMChatBackend("some/model", GenerationSettings())
    else:
        pytest.skip("vllm is installed: the GPU bench covers it")


def test_transformers_backend_runs_a_tiny_random_model_and_a_garbage_answer_is_an_error(tmp_path):
    """Random weights answer garbage: the stage asks once more, then reports the category as an error. The model
    (a tiny Qwen2 with the Qwen2 tokenizer class) loads from its folder as a real checkpoint does."""
    chat = TransformersChatBackend(keyword_lm(tmp_path / "qwen2"), GenerationSettings(max_tokens=16),
                                   device="cpu")
    results = chat.generate([keyword_messages(COMBAT, 3), keyword_messages(TAXONOMY.categories[0], 3)])
    assert len(results) == 2 and all(0 < r.output_tokens <= 16 and r.prompt_tokens > 100 for r in results)
    assert results == chat.generate([keyword_messages(COMBAT, 3), keyword_messages(TAXONOMY.categories[0], 3)])

    stage = KeywordsStage(KeywordsConfig(backend="transformers", keywords_per_category=3),
                          StageContext(str(tmp_path), "keywords"))
    stage.taxonomy, stage.settings, stage.chat = TAXONOMY, chat.settings, chat
    (outcome,) = stage.process_batch([{"input_id": "x", "keyword_category": "Combat Sports"}])
    assert isinstance(outcome, KeywordOutputError) and "after one retry" in str(outcome)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the check needs a node without a GPU")
@pytest.mark.parametrize("device, visible", [("cuda", ""), ("auto", "0")], ids=["cuda-asked", "gpu-handed"])
def test_transformers_backend_on_a_gpu_it_cannot_use_fails_before_loading(tmp_path, monkeypatch, device, visible):
    """A GPU asked for (`device: cuda`), or handed to the worker (Ray's CUDA_VISIBLE_DEVICES) under `auto`, that
    torch cannot use is one clear error at set-up, before any file is read: never a silent CPU run."""
    from humove.devices import DeviceUnavailableError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    stage = KeywordsStage(KeywordsConfig(backend="transformers", model=str(tmp_path / "no-model"), device=device),
                          StageContext(str(tmp_path), "keywords"))
    with pytest.raises(DeviceUnavailableError, match=rf"^transformers chat backend: device '{device}' .*'cpu'$"):
        stage.setup()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU handed over: auto is the CPU, and the model loads
    assert TransformersChatBackend(keyword_lm(tmp_path / "lm"), GenerationSettings()).device == "cpu"
