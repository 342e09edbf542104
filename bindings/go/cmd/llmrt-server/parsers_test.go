package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"llmrt.dev/llmrt"
)

// The output parsers (--reasoning-parser, --tool-call-parser): the tiny model's answer is
// forced into their formats with a structured_outputs regex, and the server must answer
// it split, streamed or not.

// parserServer serves the shared engine with --reasoning-parser qwen3
// --tool-call-parser hermes --enable-auto-tool-choice.
func parserServer(t *testing.T) string {
	t.Helper()
	_, url, stop := startServer(serverConfig{ReasoningParser: "qwen3", ToolCallParser: "hermes", AutoToolChoice: true})
	t.Cleanup(stop)
	return url
}

// chatDeltas reads a streamed chat answer of one choice: its content, reasoning and
// tool-call pieces, and its finish reason.
type streamed struct {
	content, reasoning strings.Builder
	calls              []toolCall
	finish             string
}

func readStream(t *testing.T, body []byte) *streamed {
	t.Helper()
	s := &streamed{}
	for _, raw := range sseChunks(t, body) {
		a := decode[chatAnswer](t, raw)
		if len(a.Choices) != 1 {
			continue
		}
		c := a.Choices[0]
		if c.Delta.Content != nil {
			s.content.WriteString(*c.Delta.Content)
		}
		if c.Delta.ReasoningContent != nil {
			s.reasoning.WriteString(*c.Delta.ReasoningContent)
		}
		s.calls = append(s.calls, c.Delta.ToolCalls...)
		if c.FinishReason != nil {
			s.finish = *c.FinishReason
		}
	}
	return s
}

func TestReasoningContent(t *testing.T) {
	url := parserServer(t)
	p, _ := chatFixture(t)
	body := map[string]any{
		"messages": p.Messages, "max_tokens": 160, "temperature": 1, "seed": 3,
		"structured_outputs": map[string]any{"regex": `<think>[a-z]{3,8}</think>[a-z]{2,6}`},
	}
	status, _, b := post(t, url, "/v1/chat/completions", body)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, b)
	}
	a := decode[chatAnswer](t, b)
	m := a.Choices[0].Message
	if *a.Choices[0].FinishReason != "stop" || m.ReasoningContent == nil || m.Content == nil ||
		!regexp.MustCompile(`^[a-z]{3,8}$`).MatchString(*m.ReasoningContent) || !regexp.MustCompile(`^[a-z]{2,6}$`).MatchString(*m.Content) {
		t.Fatalf("answer %s", b)
	}

	body["stream"] = true
	_, _, sb := post(t, url, "/v1/chat/completions", body)
	s := readStream(t, sb)
	if s.reasoning.String() != *m.ReasoningContent || s.content.String() != *m.Content || s.finish != "stop" {
		t.Errorf("streamed reasoning %q content %q (%s), whole %s", s.reasoning.String(), s.content.String(), s.finish, b)
	}

	// Without the parser, the same answer is all content.
	delete(body, "stream")
	_, _, b = post(t, baseURL, "/v1/chat/completions", body)
	plain := decode[chatAnswer](t, b).Choices[0].Message
	if want := "<think>" + *m.ReasoningContent + "</think>" + *m.Content; plain.Content == nil || *plain.Content != want || plain.ReasoningContent != nil {
		t.Errorf("no parser: %s, want the content %q", b, want)
	}
	if strings.Contains(string(b), "reasoning_content") {
		t.Errorf("reasoning_content without a reasoning parser: %s", b)
	}
}

func TestAutoToolCalls(t *testing.T) {
	url := parserServer(t)
	tools := []map[string]any{
		{"type": "function", "function": map[string]any{"name": "f", "parameters": map[string]any{"type": "object", "properties": map[string]any{"a": map[string]string{"type": "integer"}}}}},
		{"type": "function", "function": map[string]any{"name": "g"}},
	}
	body := map[string]any{
		"messages": []map[string]string{{"role": "user", "content": "Call f, then g."}},
		"tools":    tools, "max_tokens": 200, "temperature": 1, "seed": 9,
		"structured_outputs": map[string]any{"regex": `<tool_call>\{"name": "f", "arguments": \{"a": [0-9]\}\}</tool_call>\n` +
			`<tool_call>\{"name": "g", "arguments": \{\}\}</tool_call>`},
	}
	status, _, b := post(t, url, "/v1/chat/completions", body)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, b)
	}
	a := decode[chatAnswer](t, b)
	c := a.Choices[0]
	calls := c.Message.ToolCalls
	if *c.FinishReason != "tool_calls" || c.Message.Content != nil || len(calls) != 2 {
		t.Fatalf("answer %s", b)
	}
	for i, name := range []string{"f", "g"} {
		if calls[i].Index != nil || !strings.HasPrefix(calls[i].ID, "call_") || calls[i].Type != "function" || calls[i].Function.Name != name {
			t.Errorf("call %d: %+v", i, calls[i])
		}
	}
	var args struct{ A *int }
	if err := json.Unmarshal([]byte(calls[0].Function.Arguments), &args); err != nil || args.A == nil || calls[1].Function.Arguments != "{}" {
		t.Errorf("arguments %q, %q: %v", calls[0].Function.Arguments, calls[1].Function.Arguments, err)
	}

	// Streamed: each call's first delta has its index, id, type and name; the arguments
	// concatenate to the whole answer's.
	body["stream"] = true
	_, _, sb := post(t, url, "/v1/chat/completions", body)
	s := readStream(t, sb)
	args2 := map[int]string{}
	for _, tc := range s.calls {
		if tc.Index == nil || *tc.Index < 0 || *tc.Index > 1 {
			t.Fatalf("delta with a bad index: %s", sb)
		}
		_, seen := args2[*tc.Index]
		first := !seen
		if first != strings.HasPrefix(tc.ID, "call_") || first != (tc.Type == "function") || first != (tc.Function.Name != "") {
			t.Errorf("delta %+v (first piece of its call: %v)", tc, first)
		}
		if first && tc.Function.Name != calls[*tc.Index].Function.Name {
			t.Errorf("delta %+v, whole call %+v", tc, calls[*tc.Index])
		}
		args2[*tc.Index] += tc.Function.Arguments
	}
	if len(args2) != 2 || args2[0] != calls[0].Function.Arguments || args2[1] != calls[1].Function.Arguments || s.finish != "tool_calls" || s.content.String() != "" {
		t.Errorf("streamed calls %v (%s, content %q), whole %s", args2, s.finish, s.content.String(), b)
	}

	// tool_choice none: no parsing, the calls' text is content.
	delete(body, "stream")
	body["tool_choice"] = "none"
	_, _, b = post(t, url, "/v1/chat/completions", body)
	c = decode[chatAnswer](t, b).Choices[0]
	if *c.FinishReason != "stop" || len(c.Message.ToolCalls) != 0 || c.Message.Content == nil || !strings.HasPrefix(*c.Message.Content, "<tool_call>") {
		t.Errorf("tool_choice none: %s", b)
	}

	// tool_choice required: the forced JSON becomes the calls (read by the server).
	delete(body, "structured_outputs")
	body["tool_choice"] = "required"
	body["temperature"] = 0
	_, _, b = post(t, url, "/v1/chat/completions", body)
	c = decode[chatAnswer](t, b).Choices[0]
	if *c.FinishReason == "tool_calls" && (len(c.Message.ToolCalls) == 0 || c.Message.Content != nil) {
		t.Errorf("tool_choice required: %s", b)
	}
}

// Unknown parser names are refused when the server starts, naming them.
func TestParserNamesChecked(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, cfg := range []serverConfig{{ReasoningParser: "nope"}, {ToolCallParser: "nope"}} {
		if _, err := newServer(engine, cfg, log); err == nil || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

// An event's pieces become delta entries, one per call, the id, type and name on a
// call's first piece only.
func TestToolCallDeltas(t *testing.T) {
	got := toolCallDeltas([]llmrt.ToolCallChunk{
		{Index: 0, Arguments: `": 1}`},
		{Index: 1, ID: "call_b", Name: "g"}, {Index: 1, Arguments: "{"}, {Index: 1, Arguments: "}"},
	})
	b, _ := json.Marshal(got)
	want := `[{"index":0,"function":{"arguments":"\": 1}"}},{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]`
	if string(b) != want {
		t.Errorf("deltas %s, want %s", b, want)
	}
	if toolCallDeltas(nil) != nil {
		t.Error("no pieces gave deltas")
	}
}
