"""llmrt-server through the official `openai` Python client.

Run by run_openai_tests.sh, which starts the server with --reasoning-parser qwen3
--tool-call-parser hermes --enable-auto-tool-choice and sets:
  LLMRT_SERVER_URL   the server's base URL, e.g. http://127.0.0.1:8000
  LLMRT_SERVER_MODEL the served model name
  LLMRT_SERVER_KEY   the API key the server requires
"""

import concurrent.futures
import json
import os
import re
import unittest

import jsonschema
import openai

URL = os.environ["LLMRT_SERVER_URL"]
MODEL = os.environ["LLMRT_SERVER_MODEL"]
KEY = os.environ["LLMRT_SERVER_KEY"]

# Generous: the machine may have two cores, and requests run in parallel.
client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, timeout=300, max_retries=0)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "country": {"type": "string", "enum": ["France", "England", "Japan"]},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "country", "capital"],
    "additionalProperties": False,
}



def extra(obj, name):
    """A field the OpenAI types do not declare (vLLM's reasoning_content), or None."""
    return (obj.model_extra or {}).get(name)


class Case(unittest.TestCase):
    def chat(self, **kw):
        kw.setdefault("model", MODEL)
        kw.setdefault("messages", QUESTION)
        kw.setdefault("max_tokens", 16)
        return client.chat.completions.create(**kw)

    def structured(self, **kw):
        """A chat with an output constraint."""
        return self.chat(**kw)


class Basics(Case):
    def test_models(self):
        ids = [m.id for m in client.models.list().data]
        self.assertEqual(ids, [MODEL])

    def test_chat_completion(self):
        r = self.chat(temperature=0)
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL)
        self.assertEqual(len(r.choices), 1)
        c = r.choices[0]
        self.assertEqual(c.index, 0)
        self.assertEqual(c.message.role, "assistant")
        self.assertTrue(c.message.content)
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_stream_equals_non_stream(self):
        kw = dict(temperature=0.8, seed=1234, max_tokens=24)
        whole = self.chat(**kw)
        chunks = list(self.chat(stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finish, [whole.choices[0].finish_reason])
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        usage = chunks[-1].usage
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(
            (usage.prompt_tokens, usage.completion_tokens),
            (whole.usage.prompt_tokens, whole.usage.completion_tokens),
        )
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    def test_logprobs(self):
        r = self.chat(temperature=0, logprobs=True, top_logprobs=3, max_tokens=8)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertIsInstance(t.token, str)
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)
            self.assertEqual(len(t.top_logprobs), 3)
            # Greedy: the chosen token is the most likely one.
            self.assertEqual(t.top_logprobs[0].token, t.token)
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=5)
            self.assertGreaterEqual(t.top_logprobs[0].logprob, t.top_logprobs[1].logprob)

    def test_n2(self):
        r = self.chat(temperature=0, n=2, max_tokens=8)
        self.assertEqual([c.index for c in r.choices], [0, 1])
        self.assertEqual(r.choices[0].message.content, r.choices[1].message.content)
        if r.choices[0].finish_reason == "length":
            self.assertEqual(r.usage.completion_tokens, 16)
        sampled = self.chat(temperature=1.0, seed=5, n=2, max_tokens=8)
        self.assertEqual(len(sampled.choices), 2)

    def test_completions(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.object, "text_completion")
        c = r.choices[0]
        lp = c.logprobs
        n = r.usage.completion_tokens
        self.assertEqual((len(lp.tokens), len(lp.token_logprobs), len(lp.top_logprobs), len(lp.text_offset)), (n, n, n, n))
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))
        for tok, top in zip(lp.tokens, lp.top_logprobs):
            self.assertIn(tok, top)
        streamed = "".join(
            ch.choices[0].text
            for ch in client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True)
        )
        self.assertEqual(streamed, c.text)

    def test_bad_requests(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(n=0)
        self.assertIn("n must be", str(e.exception))
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(extra_body={"top_p": 2})
        self.assertEqual(e.exception.body.get("param"), "top_p")
        with self.assertRaises(openai.BadRequestError):
            self.chat(max_tokens=-1)
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(model="no-such-model")
        self.assertEqual(e.exception.code, "model_not_found")
        self.assertEqual(e.exception.param, "model")
        bad_key = openai.OpenAI(base_url=URL + "/v1", api_key="sk-wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad_key.models.list()
        # Still serving.
        self.assertTrue(self.chat(temperature=0, max_tokens=2).choices[0].message.content)

    def test_vllm_extras(self):
        r = self.chat(temperature=0, max_tokens=4, extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True, "min_tokens": 4})
        self.assertEqual(r.usage.completion_tokens, 4)


class StructuredOutputs(Case):
    def test_json_schema_20_seeds(self):
        fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}
        messages = [{"role": "user", "content": "Describe Paris as JSON."}]
        self.structured(messages=messages, response_format=fmt, max_tokens=96)  # skips if unsupported

        def one(seed):
            return self.chat(messages=messages, response_format=fmt, max_tokens=96, temperature=1.0, seed=seed)

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(one, range(20)))
        for seed, r in enumerate(answers):
            c = r.choices[0]
            self.assertEqual(c.finish_reason, "stop", f"seed {seed}: {c.message.content!r}")
            jsonschema.validate(json.loads(c.message.content), CITY_SCHEMA)

    def test_json_object(self):
        r = self.structured(response_format={"type": "json_object"}, max_tokens=64, temperature=0)
        if r.choices[0].finish_reason == "stop":
            self.assertIsInstance(json.loads(r.choices[0].message.content), dict)

    def test_choice(self):
        r = self.structured(extra_body={"structured_outputs": {"choice": ["yes", "no"]}}, temperature=0.7, seed=3)
        self.assertIn(r.choices[0].message.content, ("yes", "no"))

    def test_regex(self):
        r = self.structured(
            messages=[{"role": "user", "content": "Give me a phone number."}],
            extra_body={"structured_outputs": {"regex": r"[0-9]{3}-[0-9]{4}"}},
            max_tokens=16,
        )
        self.assertRegex(r.choices[0].message.content, r"^[0-9]{3}-[0-9]{4}$")

    def test_tool_choice_required(self):
        r = self.structured(
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=96,
            temperature=0,
        )
        c = r.choices[0]
        self.assertEqual(c.finish_reason, "tool_calls", c.message.content)
        self.assertIsNone(c.message.content)
        self.assertEqual(len(c.message.tool_calls), 1)
        call = c.message.tool_calls[0]
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        self.assertIn(json.loads(call.function.arguments)["city"], ("Paris", "London", "Tokyo"))
        self.assertTrue(call.id)

    def test_tool_choice_named_streamed(self):
        kw = dict(
            messages=[{"role": "user", "content": "What is the weather in Tokyo?"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=64,
            temperature=0,
        )
        whole = self.structured(**kw)
        calls = [tc for ch in self.chat(stream=True, **kw) if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0].function.name, "get_weather")
        self.assertEqual(json.loads(calls[0].function.arguments), json.loads(whole.choices[0].message.tool_calls[0].function.arguments))


WEATHER_CALL = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "(Paris|London|Tokyo)"\}\}</tool_call>'
THINK = r"<think>[a-z ]{3,20}</think>[a-z ]{2,20}"


class Parsers(Case):
    """The server runs with --reasoning-parser qwen3 and --tool-call-parser hermes: the
    model's answer is forced into their formats with a regex, and must come back split."""

    def test_auto_tool_call_streamed(self):
        kw = dict(
            messages=[{"role": "user", "content": "What is the weather in Tokyo?"}],
            tools=[WEATHER_TOOL],
            tool_choice="auto",
            max_tokens=64,
            temperature=1.0,
            seed=21,
            extra_body={"structured_outputs": {"regex": WEATHER_CALL}},
        )
        whole = self.chat(**kw).choices[0]
        self.assertEqual(whole.finish_reason, "tool_calls", whole.message)
        self.assertIsNone(whole.message.content)
        self.assertEqual(len(whole.message.tool_calls), 1)
        call = whole.message.tool_calls[0]
        self.assertEqual((call.type, call.function.name), ("function", "get_weather"))
        self.assertTrue(call.id.startswith("call_"))
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])

        pieces = [tc for ch in self.chat(stream=True, **kw) if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
        self.assertTrue(pieces)
        self.assertEqual({p.index for p in pieces}, {0})
        self.assertTrue(pieces[0].id.startswith("call_"))
        self.assertEqual((pieces[0].type, pieces[0].function.name), ("function", "get_weather"))
        self.assertTrue(all(p.id is None and p.function.name is None for p in pieces[1:]))
        self.assertEqual("".join(p.function.arguments or "" for p in pieces), call.function.arguments)

    def test_reasoning_content(self):
        kw = dict(temperature=1.0, seed=8, max_tokens=64, extra_body={"structured_outputs": {"regex": THINK}})
        whole = self.chat(**kw).choices[0]
        reasoning = extra(whole.message, "reasoning_content")
        self.assertEqual(whole.finish_reason, "stop", whole.message)
        self.assertRegex(reasoning, r"^[a-z ]{3,20}$")
        self.assertRegex(whole.message.content, r"^[a-z ]{2,20}$")

        chunks = [c for c in self.chat(stream=True, **kw) if c.choices]
        streamed_reasoning = "".join(extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks)
        streamed_content = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertEqual((streamed_reasoning, streamed_content), (reasoning, whole.message.content))


if __name__ == "__main__":
    unittest.main()
