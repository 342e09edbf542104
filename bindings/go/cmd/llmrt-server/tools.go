package main

import (
	"bytes"
	"encoding/json"

	"llmrt.dev/llmrt"
)

// How a chat request's tool_choice constrains the answer.
type toolMode int

const (
	toolsNone     toolMode = iota // no tools, or tool_choice "none"
	toolsAuto                     // the model may call tools: the template sees them
	toolsRequired                 // the answer is one or more tool calls
	toolsNamed                    // the answer is a call of one named function
)

// toolPlan is a chat request's tools, resolved.
type toolPlan struct {
	mode toolMode
	// function is the named function (toolsNamed).
	function string
	// schema is the structured_outputs constraint forcing the calls (required, named).
	schema json.RawMessage
}

// planTools checks tools and tool_choice and composes the constraint a forced
// tool_choice needs: "required" makes the answer a JSON list of {"name", "parameters"}
// objects, one of the tools each; a named function makes it that function's arguments.
// "auto" answers are parsed by the library's tool_call_parser instead (see
// Server.outputParsers).
func planTools(tools []tool, rawChoice json.RawMessage, parallel bool) (toolPlan, *apiError) {
	choice, name, err := parseToolChoice(rawChoice, len(tools) > 0)
	if err != nil {
		return toolPlan{}, err
	}
	for _, t := range tools {
		if t.Type != "function" || t.Function.Name == "" {
			return toolPlan{}, badRequest("tools", "every tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}")
		}
	}
	switch choice {
	case toolsRequired:
		return toolPlan{mode: toolsRequired, schema: requiredSchema(tools, parallel)}, nil
	case toolsNamed:
		for _, t := range tools {
			if t.Function.Name == name {
				return toolPlan{mode: toolsNamed, function: name, schema: marshalRaw(map[string]any{"json": parameters(t)})}, nil
			}
		}
		return toolPlan{}, badRequest("tool_choice", "tool_choice names the function %q, which is not in tools", name)
	}
	return toolPlan{mode: choice}, nil
}

// parseToolChoice reads "none" | "auto" | "required" | {"type": "function",
// "function": {"name": ...}}; absent, it is "auto" with tools and "none" without.
func parseToolChoice(raw json.RawMessage, haveTools bool) (toolMode, string, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		if haveTools {
			return toolsAuto, "", nil
		}
		return toolsNone, "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		modes := map[string]toolMode{"none": toolsNone, "auto": toolsAuto, "required": toolsRequired}
		m, ok := modes[s]
		if !ok {
			return 0, "", badRequest("tool_choice", "tool_choice must be none, auto, required or a function, got %q", s)
		}
		if m != toolsNone && !haveTools {
			return 0, "", badRequest("tool_choice", "tool_choice %q needs tools", s)
		}
		return m, "", nil
	}
	var named struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if json.Unmarshal(raw, &named) != nil || named.Type != "function" || named.Function.Name == "" {
		return 0, "", badRequest("tool_choice", "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
	}
	if !haveTools {
		return 0, "", badRequest("tool_choice", "tool_choice names a function but there are no tools")
	}
	return toolsNamed, named.Function.Name, nil
}

// parameters is a tool's parameter schema (any object when it has none).
func parameters(t tool) json.RawMessage {
	if len(bytes.TrimSpace(t.Function.Parameters)) == 0 || string(t.Function.Parameters) == "null" {
		return json.RawMessage(`{"type":"object"}`)
	}
	return t.Function.Parameters
}

// requiredSchema is the structured_outputs constraint of tool_choice "required": a
// non-empty list of calls (one call unless parallel), each naming one of the tools with
// its parameters and nothing else (the shape vLLM uses).
func requiredSchema(tools []tool, parallel bool) json.RawMessage {
	calls := make([]any, len(tools))
	for i, t := range tools {
		calls[i] = map[string]any{
			"type": "object",
			"properties": map[string]any{
				"name":       map[string]any{"type": "string", "enum": []string{t.Function.Name}},
				"parameters": parameters(t),
			},
			"required":             []string{"name", "parameters"},
			"additionalProperties": false,
		}
	}
	schema := map[string]any{"type": "array", "minItems": 1, "items": map[string]any{"anyOf": calls}}
	if !parallel {
		schema["maxItems"] = 1
	}
	return marshalRaw(map[string]any{"json": schema})
}

// toolCalls reads the calls out of a forced answer's text; ok is false when the text
// is not the JSON the constraint asked for (e.g. cut short by max_tokens).
func (p toolPlan) toolCalls(text string) (calls []toolCall, ok bool) {
	switch p.mode {
	case toolsNamed:
		if !json.Valid([]byte(text)) {
			return nil, false
		}
		return []toolCall{newToolCall(0, p.function, compactJSON(text))}, true
	case toolsRequired:
		var list []struct {
			Name       string          `json:"name"`
			Parameters json.RawMessage `json:"parameters"`
		}
		if json.Unmarshal([]byte(text), &list) != nil || len(list) == 0 {
			return nil, false
		}
		for i, c := range list {
			calls = append(calls, newToolCall(i, c.Name, compactJSON(string(c.Parameters))))
		}
		return calls, true
	}
	return nil, false
}

func newToolCall(index int, name, arguments string) toolCall {
	return toolCall{Index: &index, ID: newID("call_"), Type: "function",
		Function: functionCall{Name: name, Arguments: arguments}}
}

func compactJSON(s string) string {
	var b bytes.Buffer
	if json.Compact(&b, []byte(s)) != nil {
		return s
	}
	return b.String()
}

// forced reports whether the answer must be tool calls.
func (p toolPlan) forced() bool { return p.mode == toolsRequired || p.mode == toolsNamed }

// finishReason is OpenAI's finish_reason of a choice: "tool_calls" when it made calls,
// under "auto" or "required" (a named function's call is "stop", as OpenAI and vLLM
// answer).
func (p toolPlan) finishReason(r llmrt.FinishReason, gotCalls bool) string {
	if gotCalls && p.mode != toolsNamed {
		return "tool_calls"
	}
	return finishReason(r)
}

// parsedToolCalls gives the calls the library's tool_call_parser found in a whole
// answer, in the message's shape.
func parsedToolCalls(calls []llmrt.ToolCall) []toolCall {
	out := make([]toolCall, len(calls))
	for i, c := range calls {
		out[i] = toolCall{ID: c.ID, Type: "function", Function: functionCall{Name: c.Name, Arguments: c.Arguments}}
	}
	return out
}

// toolCallDeltas gives an event's tool-call pieces as delta.tool_calls entries: a
// call's first entry has its id, type and name, the later ones only arguments to
// append. Consecutive pieces of one call are merged.
func toolCallDeltas(pieces []llmrt.ToolCallChunk) []toolCall {
	var out []toolCall
	for _, p := range pieces {
		if n := len(out); n > 0 && *out[n-1].Index == p.Index && p.ID == "" && p.Name == "" {
			out[n-1].Function.Arguments += p.Arguments
			continue
		}
		index := p.Index
		tc := toolCall{Index: &index, Function: functionCall{Name: p.Name, Arguments: p.Arguments}}
		if p.ID != "" {
			tc.ID, tc.Type = p.ID, "function"
		}
		out = append(out, tc)
	}
	return out
}
