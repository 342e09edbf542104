#!/usr/bin/env python3
"""Writes a C header of reference values from a fixture model's expected.json (the
transformers outputs), so the C tests compare against the reference, not against llmrt.

Usage: gen_expected.py path/to/expected.json > expected.h
"""
import json
import sys


def c_string(s):
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if 0x20 <= b < 0x7F and c not in '"\\?':
            out.append(c)
        else:
            out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'


def c_array(name, xs):
    return "static const uint32_t %s[] = {%s};\n#define %s_LEN %d\n" % (
        name, ", ".join(str(x) for x in xs), name, len(xs))


def main():
    d = json.load(open(sys.argv[1], encoding="utf-8"))
    prompts, greedy = d["prompts"], d["greedy_ids"]
    out = ["/* Generated at test time by gen_expected.py from %s. */\n" % sys.argv[1].split("/")[-1],
           "#include <stdint.h>\n"]
    for name in ("len4", "len13"):
        i = next(k for k, p in enumerate(prompts) if p["name"] == name)
        tag = name.upper()
        out.append("#define %s_TEXT %s\n" % (tag, c_string(prompts[i]["text"])))
        out.append("#define %s_ADD_SPECIAL %d\n" % (tag, int(prompts[i]["add_special_tokens"])))
        out.append(c_array(tag + "_IDS", prompts[i]["ids"]))
        out.append(c_array(tag + "_GREEDY", greedy[i]))
    i = next(k for k, p in enumerate(prompts) if "messages" in p)
    out.append("#define CHAT_MESSAGES_JSON %s\n" % c_string(json.dumps(prompts[i]["messages"])))
    out.append("#define CHAT_TEXT %s\n" % c_string(prompts[i]["text"]))
    out.append(c_array("CHAT_IDS", prompts[i]["ids"]))
    out.append(c_array("CHAT_GREEDY", greedy[i]))
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
