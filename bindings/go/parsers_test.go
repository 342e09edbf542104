package llmrt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// The output parsers are tested by forcing the tiny model's output into their formats
// with a structured_outputs regex: the library must then split it.

// forced is a sampled request whose output the regex forces.
func forced(regex string, n int, seed int64) Request {
	return Request{
		Prompt: "The old farmer",
		SamplingParams: SamplingParams{
			MaxTokens: 160, Temperature: Float(1), Seed: Int(seed), N: n,
		},
		Extra: map[string]any{"structured_outputs": map[string]any{"regex": regex}},
	}
}

func readAll(ch <-chan Event) []Event {
	var events []Event
	for ev := range ch {
		events = append(events, ev)
	}
	return events
}

// replay is a closed channel of events, for Collect.
func replay(events []Event) <-chan Event {
	ch := make(chan Event, len(events))
	for _, ev := range events {
		ch <- ev
	}
	close(ch)
	return ch
}

// rawText is a sequence's whole text, parsers aside.
func rawText(t *testing.T, s Sequence) string {
	t.Helper()
	text, err := shared.Detokenize(s.TokenIDs, true)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// reasoning_parser qwen3 splits <think>...</think> off the content, per sequence, and the
// events' pieces concatenate to the split.
func TestReasoningParser(t *testing.T) {
	req := forced(`<think>[a-z]{3,8}</think>[a-z]{2,6}`, 2, 11)
	req.ReasoningParser = "qwen3"
	ch, err := shared.Submit(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	events := readAll(ch)
	res, err := Collect(replay(events))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Sequences) != 2 {
		t.Fatalf("%d sequences, want 2", len(res.Sequences))
	}
	for _, s := range res.Sequences {
		raw := rawText(t, s)
		if s.FinishReason != FinishStop {
			t.Errorf("sequence %d: finish %v (raw %q), want stop", s.Index, s.FinishReason, raw)
			continue
		}
		if !regexp.MustCompile(`^[a-z]{3,8}$`).MatchString(s.Reasoning) || !regexp.MustCompile(`^[a-z]{2,6}$`).MatchString(s.Text) {
			t.Errorf("sequence %d: reasoning %q, content %q; raw %q", s.Index, s.Reasoning, s.Text, raw)
		}
		if want := "<think>" + s.Reasoning + "</think>" + s.Text; raw != want {
			t.Errorf("sequence %d: raw %q, want %q", s.Index, raw, want)
		}
		if len(s.ToolCalls) != 0 {
			t.Errorf("sequence %d: tool calls %+v without a tool_call_parser", s.Index, s.ToolCalls)
		}
	}
	if res.Reasoning != res.Sequences[0].Reasoning || res.Text != res.Sequences[0].Text {
		t.Errorf("result %q/%q, sequence 0 %q/%q", res.Reasoning, res.Text, res.Sequences[0].Reasoning, res.Sequences[0].Text)
	}
	pieces := 0
	for _, ev := range events {
		if ev.Reasoning != "" {
			pieces++
		}
	}
	if pieces == 0 {
		t.Error("no event carries reasoning")
	}

	// Without the parser the text is the raw output.
	plain, err := shared.Generate(context.Background(), forced(`<think>[a-z]{3,8}</think>[a-z]{2,6}`, 1, 11))
	if err != nil {
		t.Fatal(err)
	}
	if plain.Reasoning != "" || !strings.HasPrefix(plain.Text, "<think>") || plain.Text != rawText(t, plain.Sequences[0]) {
		t.Errorf("no parser: reasoning %q, text %q", plain.Reasoning, plain.Text)
	}
}

// tool_call_parser hermes finds <tool_call> blocks: their calls in ToolCalls (id and
// name on the first piece, the arguments joined), the text around them in Text.
func TestToolCallParser(t *testing.T) {
	regex := `[a-z]{2,5}<tool_call>\{"name": "f", "arguments": \{"a": [0-9]\}\}</tool_call>` +
		`<tool_call>\{"name": "g", "arguments": \{\}\}</tool_call>`
	req := forced(regex, 1, 5)
	req.ToolCallParser = "hermes"
	ch, err := shared.Submit(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	events := readAll(ch)
	var all []ToolCallChunk
	for _, ev := range events {
		all = append(all, ev.ToolCalls...)
	}
	res, err := Collect(replay(events))
	if err != nil {
		t.Fatal(err)
	}
	raw := rawText(t, res.Sequences[0])
	if res.FinishReason != FinishStop {
		t.Fatalf("finish %v, raw %q", res.FinishReason, raw)
	}
	if !regexp.MustCompile(`^[a-z]{2,5}$`).MatchString(res.Text) || !strings.HasPrefix(raw, res.Text+"<tool_call>") {
		t.Errorf("content %q, raw %q", res.Text, raw)
	}
	if len(res.ToolCalls) != 2 {
		t.Fatalf("tool calls %+v, raw %q", res.ToolCalls, raw)
	}
	f, g := res.ToolCalls[0], res.ToolCalls[1]
	if f.Index != 0 || f.Name != "f" || !strings.HasPrefix(f.ID, "call_") || !regexp.MustCompile(`^\{"a": ?[0-9]\}$`).MatchString(f.Arguments) {
		t.Errorf("call 0: %+v", f)
	}
	var args map[string]int
	if err := json.Unmarshal([]byte(f.Arguments), &args); err != nil || !strings.Contains(raw, fmt.Sprintf(`"a": %d}`, args["a"])) {
		t.Errorf("call 0 arguments %q (%v), raw %q", f.Arguments, err, raw)
	}
	if g.Index != 1 || g.Name != "g" || g.Arguments != "{}" || g.ID == f.ID || !strings.HasPrefix(g.ID, "call_") {
		t.Errorf("call 1: %+v", g)
	}
	// Each call's first piece names it; the later ones do not.
	seen := map[int]bool{}
	for _, p := range all {
		if seen[p.Index] == (p.ID != "" || p.Name != "") {
			t.Errorf("piece %+v: id and name belong to the call's first piece only", p)
		}
		seen[p.Index] = true
	}

	// An unknown parser is refused at submission, naming it.
	for _, r := range []Request{{Prompt: "hi", ToolCallParser: "nope"}, {Prompt: "hi", ReasoningParser: "nope"}} {
		_, err := shared.Submit(context.Background(), r)
		if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("%+v: %v, want ErrInvalidRequest naming the parser", r, err)
		}
	}
}

func TestDecodeAndAppendToolCalls(t *testing.T) {
	pieces := decodeToolCalls(`[{"index":1,"id":"call_b","name":"g","arguments":""},` +
		`{"index":0,"id":"call_a","name":"f","arguments":"{\"a\""},{"index":0,"id":null,"name":null,"arguments":": 1}"}]`)
	if len(pieces) != 3 || pieces[2].ID != "" || pieces[2].Name != "" || pieces[1].Arguments != `{"a"` {
		t.Fatalf("decoded %+v", pieces)
	}
	calls := AppendToolCalls(nil, pieces[:2])
	calls = AppendToolCalls(calls, pieces[2:])
	want := []ToolCall{{0, "call_a", "f", `{"a": 1}`}, {1, "call_b", "g", ""}}
	if len(calls) != 2 || calls[0] != want[0] || calls[1] != want[1] {
		t.Errorf("calls %+v, want %+v", calls, want)
	}
	if decodeToolCalls(`not json`) != nil || decodeToolCalls(`[]`) != nil {
		t.Error("bad or empty JSON gave pieces")
	}
}
