//! Chat templates rendered as transformers' `apply_chat_template(tokenize=False)` renders them.

use llmrt::error::Error;
use llmrt::model::chat_template::{strftime_utc, ChatTemplate};
use llmrt::model::Model;
use serde_json::{json, Value};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// SmolLM2-135M-Instruct's special tokens (its tokenizer_config.json).
const SMOLLM2_BOS: &str = "<|im_start|>";
const SMOLLM2_EOS: &str = "<|im_end|>";

#[test]
fn smollm2_chat_cases_render_exactly() {
    let cases = read_json(fixtures().join("smollm2/chat_cases.json"));
    let source = cases["chat_template"].as_str().unwrap();
    let tmpl = ChatTemplate::new(source, Some(SMOLLM2_BOS), Some(SMOLLM2_EOS)).unwrap();
    let list = cases["cases"].as_array().unwrap();
    assert_eq!(list.len(), 10);
    for case in list {
        let name = case["name"].as_str().unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = tmpl.render(&case["messages"], gen, None, None).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "case {name}");
    }
}

#[test]
fn tiny_fixture_templates_render_the_chat_prompt() {
    for name in ["llama", "qwen2", "qwen3", "mixtral", "qwen2moe"] {
        let dir = fixtures().join("models").join(name);
        let model = Model::load(&dir).unwrap();
        let source = model
            .chat_template
            .as_deref()
            .expect("fixture has a chat template");
        let tok = &model.tokenizer;
        let tmpl = ChatTemplate::new(source, tok.bos_token(), tok.eos_token()).unwrap();
        let expected = read_json(dir.join("expected.json"));
        let prompt = expected["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "chat")
            .unwrap();
        let gen = prompt["add_generation_prompt"].as_bool().unwrap();
        let text = tmpl.render(&prompt["messages"], gen, None, None).unwrap();
        assert_eq!(text, prompt["text"].as_str().unwrap(), "{name}");
        if matches!(name, "llama" | "mixtral") {
            assert!(text.starts_with("<|begin_of_text|>"), "{name}");
        }
        let ids = tok.encode(&text, false).unwrap();
        let want: Vec<u32> = prompt["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{name}");
    }
}

/// Templates, inputs and outputs produced by Jinja2 3.1 set up as transformers sets it up
/// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, HF's tojson,
/// raise_exception, strftime_now and the `generation` tag). Dict keys are sorted at every
/// level so the expected text does not depend on map ordering.
const JINJA2_REFERENCE: &str = r####"{
 "cases": [
  {
   "name": "qwen25_tools",
   "template": "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
   "messages": [
    {
     "content": "What's the weather in Zürich? <b>&</b>",
     "role": "user"
    },
    {
     "content": "",
     "role": "assistant",
     "tool_calls": [
      {
       "function": {
        "arguments": {
         "city": "Zürich",
         "days": 2
        },
        "name": "get_weather"
       },
       "id": "c1",
       "type": "function"
      }
     ]
    },
    {
     "content": "{\"temp\": 21.5}",
     "role": "tool"
    },
    {
     "content": "{\"temp\": 19}",
     "role": "tool"
    },
    {
     "content": "It is 21.5 °C.",
     "role": "assistant"
    },
    {
     "content": "Thanks!\nBye",
     "role": "user"
    }
   ],
   "add_generation_prompt": true,
   "tools": [
    {
     "function": {
      "description": "Get the current weather in a city, e.g. “Zürich”.",
      "name": "get_weather",
      "parameters": {
       "properties": {
        "city": {
         "description": "City name",
         "type": "string"
        },
        "days": {
         "maximum": 7.5,
         "minimum": 1,
         "type": "integer"
        },
        "unit": {
         "enum": [
          "celsius",
          "fahrenheit"
         ],
         "type": "string"
        }
       },
       "required": [
        "city"
       ],
       "type": "object"
      }
     },
     "type": "function"
    }
   ],
   "extra": null,
   "rendered": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"function\": {\"description\": \"Get the current weather in a city, e.g. “Zürich”.\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"city\": {\"description\": \"City name\", \"type\": \"string\"}, \"days\": {\"maximum\": 7.5, \"minimum\": 1, \"type\": \"integer\"}, \"unit\": {\"enum\": [\"celsius\", \"fahrenheit\"], \"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWhat's the weather in Zürich? <b>&</b><|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": 2}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp\": 21.5}\n</tool_response>\n<tool_response>\n{\"temp\": 19}\n</tool_response><|im_end|>\n<|im_start|>assistant\nIt is 21.5 °C.<|im_end|>\n<|im_start|>user\nThanks!\nBye<|im_end|>\n<|im_start|>assistant\n"
  },
  {
   "name": "qwen25_no_tools",
   "template": "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
   "messages": [
    {
     "content": "What's the weather in Zürich? <b>&</b>",
     "role": "user"
    }
   ],
   "add_generation_prompt": false,
   "tools": null,
   "extra": null,
   "rendered": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat's the weather in Zürich? <b>&</b><|im_end|>\n"
  },
  {
   "name": "features",
   "template": "{# comment #}\n{% set ns = namespace(count=0, last='') %}\n{% for m in messages %}\n    {% set ns.count = ns.count + 1 %}\n  [{{ loop.index }}/{{ loop.length }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}] {{ m.role | upper }}: {{ m.content.strip() }}\n    {% if m.content.startswith('  ') %}(indented){% endif %}\n{% endfor %}\ncount={{ ns.count }} none={{ nothing }} flag={{ flag }} off={{ off }} f={{ f }} g={{ g }} h={{ h }} i={{ i }}\ntitle={{ \"hello wide world\".title() }} split={{ \"a,b,,c\".split(\",\") | join(\"|\") }} words={{ \"  x  y \".split() | length }}\nreplace={{ \"a-b-c\".replace(\"-\", \"+\") }} rstrip={{ \"xx\\n\\n\".rstrip() }}| lstrip={{ \"\\n\\nyy\".lstrip() }} ends={{ \"abc\".endswith(\"bc\") }}\n{% for k, v in obj.items() %}{{ k }}={{ v }};{% endfor %} get={{ obj.get(\"zz\", \"dflt\") }} get2={{ obj.get(\"a\") }}\njson={{ obj | tojson }}\nindent={{ obj | tojson(indent=2) }}\nascii={{ \"é\\u2028😀\\x7f\\x01\\\"\\\\/\" | tojson(ensure_ascii=True) }}\nraw={{ \"é\\u2028😀\\x7f\\x01\\\"\\\\/\\t\" | tojson }}\ncompact={{ obj | tojson(separators=(\",\", \":\"), sort_keys=True) }}\nempty={{ {} | tojson }} {{ [] | tojson(indent=4) }} {{ [1, [], {}] | tojson(indent=\"\\t\") }}\nfloats={{ floats | tojson }}\nrev={% for m in messages[::-1] %}{{ m.role }} {% endfor %}\nlast={{ messages[-1].content | trim }}\n{% if documents %}docs={{ documents | length }}{% endif %}\n{% if add_generation_prompt %}\n<gen>\n{% endif %}\n",
   "messages": [
    {
     "role": "system",
     "content": "  Be brief.  "
    },
    {
     "role": "user",
     "content": "Hi\nthere"
    }
   ],
   "add_generation_prompt": true,
   "tools": null,
   "extra": {
    "nothing": null,
    "flag": true,
    "off": false,
    "f": 0.1,
    "g": 1e-05,
    "h": 1e+16,
    "i": 2.0,
    "obj": {
     "a": 1,
     "b": [
      true,
      null,
      2.5
     ],
     "c": {
      "d": "e"
     }
    },
    "floats": [
     0.1,
     1e-05,
     1e+16,
     1000000000000000.0,
     2.0,
     -0.0,
     123456789.125,
     1.5e-07,
     3
    ],
    "documents": [
     {
      "title": "t",
      "text": "x"
     }
    ]
   },
   "rendered": "  [1/2 first] SYSTEM: Be brief.\n(indented)  [2/2 last] USER: Hi\nthere\ncount=2 none=None flag=True off=False f=0.1 g=1e-05 h=1e+16 i=2.0\ntitle=Hello Wide World split=a|b||c words=2\nreplace=a+b+c rstrip=xx| lstrip=yy ends=True\na=1;b=[True, None, 2.5];c={'d': 'e'}; get=dflt get2=1\njson={\"a\": 1, \"b\": [true, null, 2.5], \"c\": {\"d\": \"e\"}}\nindent={\n  \"a\": 1,\n  \"b\": [\n    true,\n    null,\n    2.5\n  ],\n  \"c\": {\n    \"d\": \"e\"\n  }\n}\nascii=\"\\u00e9\\u2028\\ud83d\\ude00\\u007f\\u0001\\\"\\\\/\"\nraw=\"é 😀\\u0001\\\"\\\\/\\t\"\ncompact={\"a\":1,\"b\":[true,null,2.5],\"c\":{\"d\":\"e\"}}\nempty={} [] [\n\t1,\n\t[],\n\t{}\n]\nfloats=[0.1, 1e-05, 1e+16, 1000000000000000.0, 2.0, -0.0, 123456789.125, 1.5e-07, 3]\nrev=user system last=Hi\nthere\ndocs=1<gen>\n"
  },
  {
   "name": "generation_tag",
   "template": "{% for m in messages %}{{ m.role }}:{% generation %}{{ m.content }}{% endgeneration %}\n{%- generation -%}  |  {%- endgeneration -%}\n{% endfor %}",
   "messages": [
    {
     "role": "system",
     "content": "  Be brief.  "
    },
    {
     "role": "user",
     "content": "Hi\nthere"
    }
   ],
   "add_generation_prompt": false,
   "tools": null,
   "extra": null,
   "rendered": "system:  Be brief.  |user:Hi\nthere|"
  }
 ],
 "strftime": [
  {
   "secs": 0,
   "fmt": "%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %%",
   "out": "Thu Thursday Jan January 01  1 00 12 001 01 00 AM 00 70 1970 %"
  },
  {
   "secs": 0,
   "fmt": "%-d %-m %-H %-I %-j %-M %-S",
   "out": "1 1 0 12 1 0 0"
  },
  {
   "secs": 0,
   "fmt": "%F %T %u %w %c",
   "out": "1970-01-01 00:00:00 4 4 Thu Jan  1 00:00:00 1970"
  },
  {
   "secs": 0,
   "fmt": "%d %b %Y",
   "out": "01 Jan 1970"
  },
  {
   "secs": 951829261,
   "fmt": "%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %%",
   "out": "Tue Tuesday Feb February 29 29 13 01 060 02 01 PM 01 00 2000 %"
  },
  {
   "secs": 951829261,
   "fmt": "%-d %-m %-H %-I %-j %-M %-S",
   "out": "29 2 13 1 60 1 1"
  },
  {
   "secs": 951829261,
   "fmt": "%F %T %u %w %c",
   "out": "2000-02-29 13:01:01 2 2 Tue Feb 29 13:01:01 2000"
  },
  {
   "secs": 951829261,
   "fmt": "%d %b %Y",
   "out": "29 Feb 2000"
  },
  {
   "secs": 1700000000,
   "fmt": "%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %%",
   "out": "Tue Tuesday Nov November 14 14 22 10 318 11 13 PM 20 23 2023 %"
  },
  {
   "secs": 1700000000,
   "fmt": "%-d %-m %-H %-I %-j %-M %-S",
   "out": "14 11 22 10 318 13 20"
  },
  {
   "secs": 1700000000,
   "fmt": "%F %T %u %w %c",
   "out": "2023-11-14 22:13:20 2 2 Tue Nov 14 22:13:20 2023"
  },
  {
   "secs": 1700000000,
   "fmt": "%d %b %Y",
   "out": "14 Nov 2023"
  },
  {
   "secs": 4102444799,
   "fmt": "%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %%",
   "out": "Thu Thursday Dec December 31 31 23 11 365 12 59 PM 59 99 2099 %"
  },
  {
   "secs": 4102444799,
   "fmt": "%-d %-m %-H %-I %-j %-M %-S",
   "out": "31 12 23 11 365 59 59"
  },
  {
   "secs": 4102444799,
   "fmt": "%F %T %u %w %c",
   "out": "2099-12-31 23:59:59 4 4 Thu Dec 31 23:59:59 2099"
  },
  {
   "secs": 4102444799,
   "fmt": "%d %b %Y",
   "out": "31 Dec 2099"
  },
  {
   "secs": 1000043200,
   "fmt": "%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %%",
   "out": "Sun Sunday Sep September 09  9 13 01 252 09 46 PM 40 01 2001 %"
  },
  {
   "secs": 1000043200,
   "fmt": "%-d %-m %-H %-I %-j %-M %-S",
   "out": "9 9 13 1 252 46 40"
  },
  {
   "secs": 1000043200,
   "fmt": "%F %T %u %w %c",
   "out": "2001-09-09 13:46:40 7 0 Sun Sep  9 13:46:40 2001"
  },
  {
   "secs": 1000043200,
   "fmt": "%d %b %Y",
   "out": "09 Sep 2001"
  }
 ]
}"####;

#[test]
fn renders_like_jinja2_for_hf_style_templates() {
    let reference: Value = serde_json::from_str(JINJA2_REFERENCE).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tmpl = ChatTemplate::new(case["template"].as_str().unwrap(), None, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tools = (!case["tools"].is_null()).then_some(&case["tools"]);
        let extra = case["extra"].as_object();
        let got = tmpl
            .render(
                &case["messages"],
                case["add_generation_prompt"].as_bool().unwrap(),
                tools,
                extra,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = case["rendered"].as_str().unwrap();
        if got != want {
            for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
                if g != w {
                    panic!("{name}: first difference on line {i}:\n got: {g:?}\nwant: {w:?}");
                }
            }
            panic!("{name}: outputs differ in length:\n got: {got:?}\nwant: {want:?}");
        }
    }
}

#[test]
fn strftime_matches_python_in_utc() {
    let reference: Value = serde_json::from_str(JINJA2_REFERENCE).unwrap();
    let cases = reference["strftime"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let secs = case["secs"].as_i64().unwrap();
        let fmt = case["fmt"].as_str().unwrap();
        assert_eq!(
            strftime_utc(fmt, secs),
            case["out"].as_str().unwrap(),
            "{fmt} at {secs}"
        );
    }
}

#[test]
fn strftime_now_renders_the_current_date() {
    let tmpl = ChatTemplate::new(
        "Today: {{ strftime_now('%d %b %Y') }} | {{ strftime_now('%Y') }}",
        None,
        None,
    )
    .unwrap();
    let out = tmpl.render(&json!([]), false, None, None).unwrap();
    let (date, year) = out
        .strip_prefix("Today: ")
        .unwrap()
        .split_once(" | ")
        .unwrap();
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(parts[0].len(), 2);
    assert!(parts[0].chars().all(|c| c.is_ascii_digit()));
    assert_eq!(parts[1].len(), 3);
    assert_eq!(parts[2], year);
    let y: i32 = year.parse().unwrap();
    assert!((2024..3000).contains(&y), "{out}");
}

#[test]
fn raise_exception_is_a_template_error_with_the_message() {
    let src = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
               {{ raise_exception('Only user and assistant roles are supported!') }}\
               {% endif %}{{ m.content }}{% endfor %}";
    let tmpl = ChatTemplate::new(src, None, None).unwrap();
    let ok = tmpl
        .render(
            &json!([{"role": "user", "content": "hi"}]),
            false,
            None,
            None,
        )
        .unwrap();
    assert_eq!(ok, "hi");
    let err = tmpl
        .render(
            &json!([{"role": "tool", "content": "x"}]),
            false,
            None,
            None,
        )
        .unwrap_err();
    match err {
        Error::Template(msg) => {
            assert_eq!(msg, "Only user and assistant roles are supported!")
        }
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn syntax_error_is_a_template_error_naming_the_problem() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
    match err {
        Error::Template(msg) => {
            assert!(msg.contains("syntax error"), "{msg}");
            assert!(msg.contains("end of input"), "{msg}");
        }
        other => panic!("expected a template error, got {other:?}"),
    }
    let err = ChatTemplate::new("{{ messages | }}", None, None).unwrap_err();
    assert!(
        matches!(err, Error::Template(ref m) if m.contains("syntax error")),
        "{err}"
    );
    // An unknown filter is found when rendering, and named.
    let tmpl = ChatTemplate::new("{{ messages | no_such_filter }}", None, None).unwrap();
    let err = tmpl.render(&json!([]), false, None, None).unwrap_err();
    assert!(
        matches!(err, Error::Template(ref m) if m.contains("no_such_filter")),
        "{err}"
    );
}

#[test]
fn runtime_errors_are_template_errors() {
    let tmpl = ChatTemplate::new("{{ messages[0].content.missing.deeper }}", None, None).unwrap();
    let err = tmpl
        .render(
            &json!([{"role": "user", "content": "x"}]),
            false,
            None,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err}");
}

#[test]
fn special_tokens_and_kwargs_reach_the_template() {
    let src = "{{ bos_token }}|{{ eos_token }}|{{ enable_thinking }}|{{ tools | length }}|\
               {{ documents[0].title }}|{% if unk_token is defined %}unk{% endif %}";
    let tmpl = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
    let extra = json!({"enable_thinking": false, "documents": [{"title": "Doc"}]});
    let tools = json!([{"type": "function"}]);
    let out = tmpl
        .render(&json!([]), false, Some(&tools), extra.as_object())
        .unwrap();
    assert_eq!(out, "<s>|</s>|False|1|Doc|");

    // No bos token: undefined renders as nothing, as in Jinja2; `tools` is None, not undefined.
    let tmpl = ChatTemplate::new(
        "[{{ bos_token }}]{% if tools is none %}none{% endif %}{% if tools is defined %} defined{% endif %}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        tmpl.render(&json!([]), false, None, None).unwrap(),
        "[]none defined"
    );

    // The explicit arguments win over chat_template_kwargs.
    let tmpl = ChatTemplate::new(
        "{{ add_generation_prompt }} {{ messages | length }}",
        None,
        None,
    )
    .unwrap();
    let extra = json!({"add_generation_prompt": false, "messages": []});
    assert_eq!(
        tmpl.render(
            &json!([{"role": "user", "content": "a"}]),
            true,
            None,
            extra.as_object()
        )
        .unwrap(),
        "True 1"
    );
}

#[test]
fn tojson_and_string_methods_in_a_custom_template() {
    let src = r#"{% for m in messages %}{{ m.content.strip().upper() }}{% if not loop.last %},{% endif %}{% endfor %}
{{ messages[0] | tojson }}
{{ {"k": "ü<&>", "n": [1, 2.5, none]} | tojson(indent=2) }}
{{ "x y" | tojson(ensure_ascii=true) }}{{ "ü" | tojson(true) }}
{{ "a b c".split(" ") | join("-") }}|{{ "hello"[1:3] }}|{{ "abc".startswith("ab") }}|{{ {"a": 1}.get("b", 7) }}"#;
    let tmpl = ChatTemplate::new(src, None, None).unwrap();
    let msgs = json!([{"content": " hi ", "role": "user"}, {"content": "yo", "role": "assistant"}]);
    let out = tmpl.render(&msgs, false, None, None).unwrap();
    let want = "HI,YO\
                {\"content\": \" hi \", \"role\": \"user\"}\n\
                {\n  \"k\": \"ü<&>\",\n  \"n\": [\n    1,\n    2.5,\n    null\n  ]\n}\n\
                \"x y\"\"\\u00fc\"\n\
                a-b-c|el|True|7";
    assert_eq!(out, want);
}

#[test]
fn trailing_newline_is_dropped_and_blocks_are_trimmed() {
    let src = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    let tmpl = ChatTemplate::new(src, None, None).unwrap();
    let out = tmpl
        .render(
            &json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            false,
            None,
            None,
        )
        .unwrap();
    assert_eq!(out, "a\nb\n");
}

/// `{% break %}` / `{% continue %}` (Jinja2's loopcontrols extension, which transformers
/// enables) need minijinja's `loop_controls` cargo feature.
#[test]
fn loop_controls() {
    let src = "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}\
               {% if m.role == 'stop' %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
    let tmpl = ChatTemplate::new(src, None, None).unwrap();
    let msgs = json!([
        {"role": "user", "content": "a"},
        {"role": "skip", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "stop", "content": "d"},
        {"role": "user", "content": "e"}
    ]);
    assert_eq!(tmpl.render(&msgs, false, None, None).unwrap(), "ac");
}

/// transformers keeps dict keys in insertion order (tool schemas are printed with
/// `tojson`); this needs the `preserve_order` features of serde_json and minijinja.
#[test]
fn tojson_keeps_key_order() {
    let tmpl = ChatTemplate::new("{{ tools[0] | tojson }}", None, None).unwrap();
    let tools: Value = serde_json::from_str(
        r#"[{"type": "function", "function": {"name": "f", "description": "d"}}]"#,
    )
    .unwrap();
    let out = tmpl.render(&json!([]), false, Some(&tools), None).unwrap();
    assert_eq!(
        out,
        r#"{"type": "function", "function": {"name": "f", "description": "d"}}"#
    );
}

#[test]
fn chat_template_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
    let tmpl =
        std::sync::Arc::new(ChatTemplate::new("{{ messages[0].content }}", None, None).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let t = tmpl.clone();
            std::thread::spawn(move || {
                t.render(
                    &json!([{"role": "user", "content": format!("m{i}")}]),
                    false,
                    None,
                    None,
                )
                .unwrap()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), format!("m{i}"));
    }
}
