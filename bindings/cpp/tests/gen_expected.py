#!/usr/bin/env python3
"""Writes a C++ header of reference values from a fixture model's expected.json (the
transformers outputs), so the C++ tests compare against the reference, not against llmrt.

For each prompt NAME (len1, len4, len13, chat, len100, len200) it defines, in namespace
`expected`: NAME_TEXT (std::string), NAME_ADD_SPECIAL (bool), NAME_IDS (the prompt's token
ids) and NAME_GREEDY (the greedy continuation), uppercased; for prompts given as a chat,
NAME_MESSAGES_JSON too (the messages as a JSON array). The top-5 tokens and logprobs of
the next-token distribution: NAME_GREEDY_TOP_IDS / NAME_GREEDY_TOP_LOGPROBS (at greedy
step t) and NAME_PROMPT_TOP_IDS / NAME_PROMPT_TOP_LOGPROBS (after reading prompt ids[0..=t]),
one row per position, best first.

Usage: gen_expected.py path/to/expected.json path/to/expected.hpp
"""
import json
import os
import sys


def cpp_string(s):
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if 0x20 <= b < 0x7F and c not in '"\\?':
            out.append(c)
        else:
            out.append("\\%03o" % b)
    return 'std::string("' + "".join(out) + '", %d)' % len(s.encode("utf-8"))


def cpp_ids(xs):
    return "std::vector<uint32_t>{%s}" % ", ".join(str(x) for x in xs)


def cpp_rows_ids(rows):
    return "std::vector<std::vector<uint32_t>>{%s}" % ", ".join("{%s}" % ", ".join(str(x) for x in r) for r in rows)


def cpp_rows_floats(rows):
    return "std::vector<std::vector<float>>{%s}" % ", ".join(
        "{%s}" % ", ".join("%.9gf" % x for x in r) for r in rows)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        d = json.load(f)
    out = [
        "// Generated at build time by gen_expected.py from %s. Do not edit.\n" % os.path.basename(src),
        "#pragma once\n#include <cstdint>\n#include <string>\n#include <vector>\n\nnamespace expected {\n",
    ]
    for i, (p, greedy) in enumerate(zip(d["prompts"], d["greedy_ids"])):
        tag = p["name"].upper()
        out.append("inline const std::string %s_TEXT = %s;\n" % (tag, cpp_string(p["text"])))
        out.append("inline const bool %s_ADD_SPECIAL = %s;\n" % (tag, "true" if p["add_special_tokens"] else "false"))
        out.append("inline const std::vector<uint32_t> %s_IDS = %s;\n" % (tag, cpp_ids(p["ids"])))
        out.append("inline const std::vector<uint32_t> %s_GREEDY = %s;\n" % (tag, cpp_ids(greedy)))
        for what in ("greedy", "prompt"):
            top = d[what + "_top5"][i]
            out.append("inline const std::vector<std::vector<uint32_t>> %s_%s_TOP_IDS = %s;\n" % (tag, what.upper(), cpp_rows_ids(top["ids"])))
            out.append("inline const std::vector<std::vector<float>> %s_%s_TOP_LOGPROBS = %s;\n" % (tag, what.upper(), cpp_rows_floats(top["logprobs"])))
        if "messages" in p:
            out.append("inline const std::string %s_MESSAGES_JSON = %s;\n" % (tag, cpp_string(json.dumps(p["messages"]))))
    out.append("}  // namespace expected\n")
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(out))
    os.replace(tmp, dst)


if __name__ == "__main__":
    main()
