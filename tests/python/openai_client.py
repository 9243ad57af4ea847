"""The official `openai` Python client against a running maasbox (see scripts/openai-test.sh).

Environment: MAASBOX_BASE_URL (…/v1), MAASBOX_API_KEY, MAASBOX_CHAT_MODEL, MAASBOX_EMBED_MODEL,
MAASBOX_KB (a knowledge base holding assets/samples/guide.md and contract.ofd).
Prints 'N passed, M failed' and exits non-zero on any failure.
"""

import math
import os
import sys
import traceback

import openai

client = openai.OpenAI(base_url=os.environ["MAASBOX_BASE_URL"], api_key=os.environ["MAASBOX_API_KEY"])
CHAT = os.environ["MAASBOX_CHAT_MODEL"]
EMBED = os.environ["MAASBOX_EMBED_MODEL"]
KB = os.environ["MAASBOX_KB"]


def test_models_lists_the_imported_models():
    ids = [m.id for m in client.models.list().data]
    assert CHAT in ids and EMBED in ids, ids


def test_chat():
    r = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=24
    )
    text = r.choices[0].message.content
    assert "Paris" in text, text
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat_matches_non_streaming():
    msgs = [{"role": "user", "content": "Name two planets."}]
    full = client.chat.completions.create(model=CHAT, messages=msgs, temperature=0, max_tokens=20).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=CHAT, messages=msgs, temperature=0, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full, (streamed, full)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions():
    r = client.completions.create(model=CHAT, prompt="The sky is", max_tokens=8, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens <= 8


def test_embeddings():
    r = client.embeddings.create(
        model=EMBED, input=["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    )
    v = [d.embedding for d in r.data]
    assert len(v[0]) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert abs(math.sqrt(dot(v[0], v[0])) - 1) < 1e-3
    assert dot(v[0], v[1]) > dot(v[0], v[2])
    # The client asks for base64 by default when numpy is present; float explicitly too.
    f = client.embeddings.create(model=EMBED, input="hello", encoding_format="float").data[0].embedding
    assert len(f) == 384


def test_errors_are_openai_errors():
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("expected NotFoundError")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e
    bad = openai.OpenAI(base_url=os.environ["MAASBOX_BASE_URL"], api_key="mbx_0123456789abcdef_nope")
    try:
        bad.models.list()
        raise AssertionError("expected AuthenticationError")
    except openai.AuthenticationError:
        pass
    try:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], n=2)
        raise AssertionError("expected BadRequestError")
    except openai.BadRequestError as e:
        assert e.param == "n", e


def test_retrieval_augmented_chat_returns_citations():
    ask = [{"role": "user", "content": "Why would the server refuse to start? Mention the data directory."}]
    r = client.chat.completions.create(
        model=CHAT, messages=ask, max_tokens=16, temperature=0, extra_body={"knowledge": {"bases": [KB], "top_k": 3}}
    )
    cites = r.model_extra["citations"]
    assert 1 <= len(cites) <= 3, cites
    assert cites[0]["index"] == 1 and cites[0]["document"] == "guide.md", cites
    assert "data directory lock" in " ".join(c["text"] for c in cites), cites
    stream = client.chat.completions.create(
        model=CHAT, messages=ask, max_tokens=16, temperature=0, stream=True, extra_body={"knowledge": {"bases": [KB]}}
    )
    chunks = list(stream)
    with_cites = [c for c in chunks if (c.model_extra or {}).get("citations")]
    assert len(with_cites) == 1 and with_cites[0] is chunks[-1], [c.model_extra for c in chunks[-3:]]
    try:
        client.chat.completions.create(model=CHAT, messages=ask, extra_body={"knowledge": {"bases": ["no-such-base"]}})
        raise AssertionError("expected NotFoundError")
    except openai.NotFoundError as e:
        assert e.param == "knowledge.bases", e


if __name__ == "__main__":
    passed = failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Exception:
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
