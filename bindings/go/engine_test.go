package llmrt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run against the real shared library and the tiny llama fixture model; the
// expected tokens come from the fixture's expected.json (transformers' outputs).

type fixturePrompt struct {
	Name                string    `json:"name"`
	Text                string    `json:"text"`
	AddSpecialTokens    bool      `json:"add_special_tokens"`
	IDs                 []uint32  `json:"ids"`
	Messages            []Message `json:"messages"`
	AddGenerationPrompt *bool     `json:"add_generation_prompt"`
}

type fixture struct {
	Prompts   []fixturePrompt `json:"prompts"`
	GreedyIDs [][]uint32      `json:"greedy_ids"`
}

var (
	modelDir string
	expected fixture
	shared   *Engine
)

func TestMain(m *testing.M) {
	// Enables the library's test-only panic hook (request field `llmrt_test_panic`); set
	// before any library thread runs.
	os.Setenv("LLMRT_TEST_HOOKS", "1")
	modelDir = os.Getenv("LLMRT_TEST_MODEL")
	if modelDir == "" {
		modelDir = filepath.Join("..", "..", "tests", "fixtures", "models", "llama")
	}
	modelDir, _ = filepath.Abs(modelDir)
	b, err := os.ReadFile(filepath.Join(modelDir, "expected.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the fixture:", err)
		os.Exit(1)
	}
	if err := json.Unmarshal(b, &expected); err != nil {
		fmt.Fprintln(os.Stderr, "parsing expected.json:", err)
		os.Exit(1)
	}
	if len(expected.Prompts) != len(expected.GreedyIDs) || len(expected.Prompts) == 0 {
		fmt.Fprintln(os.Stderr, "expected.json: prompts and greedy_ids do not match")
		os.Exit(1)
	}
	shared, err = New(testConfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, "loading the fixture model:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "Close:", err)
		code = 1
	}
	os.Exit(code)
}

func testConfig() Config {
	return Config{Model: modelDir, NumThreads: 2}
}

func prompt(t *testing.T, name string) (fixturePrompt, []uint32) {
	t.Helper()
	for i, p := range expected.Prompts {
		if p.Name == name {
			return p, expected.GreedyIDs[i]
		}
	}
	t.Fatalf("expected.json has no prompt %q", name)
	return fixturePrompt{}, nil
}

func chatPrompt(t *testing.T) (fixturePrompt, []uint32) {
	t.Helper()
	for i, p := range expected.Prompts {
		if p.Messages != nil {
			return p, expected.GreedyIDs[i]
		}
	}
	t.Fatal("expected.json has no chat prompt")
	return fixturePrompt{}, nil
}

// textPrompts are the fixture's plain-text prompts.
func textPrompts() (ps []fixturePrompt, greedy [][]uint32) {
	for i, p := range expected.Prompts {
		if p.Messages == nil {
			ps = append(ps, p)
			greedy = append(greedy, expected.GreedyIDs[i])
		}
	}
	return
}

// drain reads a request's channel to its end with a deadline, checking the event
// protocol: exactly one final event, the last one, and only final events carry a finish
// reason or usage.
func drain(t *testing.T, ch <-chan Event) *Result {
	t.Helper()
	res := &Result{}
	var text strings.Builder
	finals := 0
	deadline := time.After(120 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				if finals != 1 {
					t.Fatalf("channel closed after %d final events", finals)
				}
				res.Text = text.String()
				return res
			}
			if finals > 0 {
				t.Fatalf("event after the final event: %+v", ev)
			}
			res.Events++
			res.RequestID = ev.RequestID
			res.TokenIDs = append(res.TokenIDs, ev.TokenIDs...)
			text.WriteString(ev.Text)
			if ev.Final() {
				finals++
				res.FinishReason = ev.FinishReason
				res.StopTokenID = ev.StopTokenID
				res.ErrorMessage = ev.ErrorMessage
				if ev.Usage == nil {
					t.Fatalf("final event without usage: %+v", ev)
				}
				res.Usage = *ev.Usage
			} else if ev.FinishReason != FinishNone || ev.Usage != nil {
				t.Fatalf("token event with a finish reason or usage: %+v", ev)
			}
		case <-deadline:
			t.Fatal("request did not finish within 120 s")
		}
	}
}

func equalIDs(t *testing.T, what string, got, want []uint32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tokens %v, want %d %v", what, len(got), got, len(want), want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: token %d is %d, want %d\n got %v\nwant %v", what, i, got[i], want[i], got, want)
		}
	}
}

func greedyParams(n int) SamplingParams {
	return SamplingParams{MaxTokens: n, Temperature: Float(0), IgnoreEOS: true}
}

func checkGreedy(t *testing.T, what string, res *Result, promptLen int, want []uint32) {
	t.Helper()
	equalIDs(t, what, res.TokenIDs, want)
	if res.FinishReason != FinishLength {
		t.Errorf("%s: finish reason %v, want length", what, res.FinishReason)
	}
	if res.Usage.PromptTokens != uint64(promptLen) || res.Usage.CompletionTokens != uint64(len(want)) {
		t.Errorf("%s: usage %+v, want %d prompt and %d completion tokens", what, res.Usage, promptLen, len(want))
	}
	text, err := shared.Detokenize(want, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Text != text {
		t.Errorf("%s: text %q, want the decode of the tokens %q", what, res.Text, text)
	}
}

func TestVersionAndCapabilities(t *testing.T) {
	if Version() == "" {
		t.Error("empty version")
	}
	if LibraryABIVersion() != ABIVersion {
		t.Errorf("library ABI %d, header %d", LibraryABIVersion(), ABIVersion)
	}
	caps, err := Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	if caps.Version != Version() {
		t.Errorf("capabilities version %q, Version() %q", caps.Version, Version())
	}
	found := false
	for _, a := range caps.Architectures {
		found = found || a == "LlamaForCausalLM"
	}
	if !found {
		t.Errorf("LlamaForCausalLM not in %v", caps.Architectures)
	}
}

func TestErrors(t *testing.T) {
	if got := StatusInvalidJSON.String(); got != "LLMRT_ERROR_INVALID_JSON" {
		t.Errorf("StatusInvalidJSON.String() = %q", got)
	}
	if got := Status(9999).String(); got != "LLMRT_ERROR_UNKNOWN" {
		t.Errorf("Status(9999).String() = %q", got)
	}
	err := fmt.Errorf("wrapped: %w", &Error{Code: StatusInvalidRequest, Message: "unknown field `x`"})
	if !errors.Is(err, ErrInvalidRequest) || errors.Is(err, ErrInvalidJSON) || errors.Is(err, ErrClosed) {
		t.Error("errors.Is does not match by code")
	}
	if StatusOf(err) != StatusInvalidRequest || StatusOf(nil) != StatusOK || StatusOf(errors.New("x")) != StatusInternal {
		t.Error("StatusOf")
	}
	if !errors.Is(ErrClosed, ErrEngineStopped) || errors.Is(ErrEngineStopped, ErrClosed) {
		t.Error("ErrClosed must match ErrEngineStopped, not the reverse")
	}
	if !strings.Contains(err.Error(), "LLMRT_ERROR_INVALID_REQUEST") || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("message %q", err.Error())
	}
}

func TestModelInfoAndMetrics(t *testing.T) {
	var cfg struct {
		VocabSize     int `json:"vocab_size"`
		HiddenSize    int `json:"hidden_size"`
		NumLayers     int `json:"num_hidden_layers"`
		MaxPositional int `json:"max_position_embeddings"`
	}
	b, err := os.ReadFile(filepath.Join(modelDir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	info, err := shared.ModelInfo()
	if err != nil {
		t.Fatal(err)
	}
	if info.Architecture != "LlamaForCausalLM" || info.VocabSize != cfg.VocabSize ||
		info.HiddenSize != cfg.HiddenSize || info.NumHiddenLayers != cfg.NumLayers {
		t.Errorf("model info %s does not match config.json", info.Raw)
	}
	if info.MaxModelLen <= 0 || info.MaxModelLen > cfg.MaxPositional || !info.HasChatTemplate || len(info.EOSTokenIDs) == 0 {
		t.Errorf("model info %s", info.Raw)
	}

	mj, err := shared.MetricsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var metrics map[string]any
	if err := json.Unmarshal([]byte(mj), &metrics); err != nil {
		t.Fatalf("metrics JSON %q: %v", mj, err)
	}
	if _, ok := metrics["num_requests_running"]; !ok {
		t.Errorf("no num_requests_running in %s", mj)
	}
	prom, err := shared.MetricsPrometheus()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(prom, "llmrt_") || !strings.Contains(prom, "# TYPE") {
		t.Errorf("Prometheus text %q", prom)
	}
}

func TestTokenizeDetokenize(t *testing.T) {
	for _, p := range expected.Prompts {
		ids, err := shared.Tokenize(p.Text, p.AddSpecialTokens)
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		equalIDs(t, "tokenize "+p.Name, ids, p.IDs)
		text, err := shared.Detokenize(p.IDs, false)
		if err != nil {
			t.Fatal(err)
		}
		// The decode keeps special tokens; the prompt text without BOS is in it.
		if !strings.Contains(text, p.Text) && p.AddSpecialTokens {
			t.Errorf("%s: detokenize %q does not contain %q", p.Name, text, p.Text)
		}
	}
	if _, err := shared.Detokenize([]uint32{1 << 30}, true); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("detokenize of a bad id: %v, want ErrInvalidRequest", err)
	}
	if ids, err := shared.Tokenize("", false); err != nil || len(ids) != 0 {
		t.Errorf("tokenize of empty text: %v %v", ids, err)
	}
}

func TestApplyChatTemplate(t *testing.T) {
	p, _ := chatPrompt(t)
	text, err := shared.ApplyChatTemplate(Chat{Messages: p.Messages, AddGenerationPrompt: p.AddGenerationPrompt})
	if err != nil {
		t.Fatal(err)
	}
	if text != p.Text {
		t.Errorf("rendered %q, want %q", text, p.Text)
	}
	ids, err := shared.Tokenize(text, false)
	if err != nil {
		t.Fatal(err)
	}
	equalIDs(t, "chat prompt ids", ids, p.IDs)

	if _, err := shared.ApplyChatTemplate(Chat{}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("empty chat: %v, want ErrInvalidRequest", err)
	}
	_, err = shared.ApplyChatTemplateJSON([]byte(`{"messages": [{"role": "user", "content": "hi"}], "bogus": 1}`))
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown chat field: %v", err)
	}
	if _, err := shared.ApplyChatTemplateJSON([]byte(`{"messages": `)); !errors.Is(err, ErrInvalidJSON) {
		t.Errorf("malformed chat JSON: %v", err)
	}
}

// Submit with prompt_token_ids, temperature 0 and ignore_eos gives transformers' greedy
// tokens for every plain-text prompt of the fixture.
func TestGreedySubmitPromptTokenIDs(t *testing.T) {
	ps, greedy := textPrompts()
	for i, p := range ps {
		ch, err := shared.Submit(context.Background(), Request{PromptTokenIDs: p.IDs, SamplingParams: greedyParams(len(greedy[i]))})
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		checkGreedy(t, "prompt_token_ids "+p.Name, drain(t, ch), len(p.IDs), greedy[i])
	}
}

// The JSON-free fast path gives the same tokens.
func TestGreedySubmitTokens(t *testing.T) {
	ps, greedy := textPrompts()
	for i, p := range ps {
		ch, err := shared.SubmitTokens(context.Background(), p.IDs, TokenParams{MaxTokens: int32(len(greedy[i])), IgnoreEOS: true})
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		checkGreedy(t, "submit_tokens "+p.Name, drain(t, ch), len(p.IDs), greedy[i])
	}
	// Token ids only: no text.
	p, want := prompt(t, "len4")
	ch, err := shared.SubmitTokens(context.Background(), p.IDs, TokenParams{MaxTokens: int32(len(want)), IgnoreEOS: true, NoText: true})
	if err != nil {
		t.Fatal(err)
	}
	res := drain(t, ch)
	equalIDs(t, "no text", res.TokenIDs, want)
	if res.Text != "" {
		t.Errorf("NoText request produced text %q", res.Text)
	}
}

// A text prompt and a chat give the same tokens as their token ids.
func TestGreedyPromptAndMessages(t *testing.T) {
	p, want := prompt(t, "len13")
	if !p.AddSpecialTokens {
		t.Skip("the fixture's len13 prompt is not tokenized with special tokens")
	}
	ch, err := shared.Submit(context.Background(), Request{Prompt: p.Text, SamplingParams: greedyParams(len(want))})
	if err != nil {
		t.Fatal(err)
	}
	checkGreedy(t, "prompt "+p.Name, drain(t, ch), len(p.IDs), want)

	c, want := chatPrompt(t)
	res, err := shared.Generate(context.Background(), Request{
		Messages:            c.Messages,
		AddGenerationPrompt: c.AddGenerationPrompt,
		SamplingParams:      greedyParams(len(want)),
	})
	if err != nil {
		t.Fatal(err)
	}
	checkGreedy(t, "messages", res, len(c.IDs), want)
}

func TestSubmitMisuse(t *testing.T) {
	ids := expected.Prompts[0].IDs
	bad := []struct {
		name   string
		req    Request
		want   error
		needle string
	}{
		{"unknown field", Request{PromptTokenIDs: ids, Extra: map[string]any{"bogus_field": 1}}, ErrInvalidRequest, "bogus_field"},
		{"negative max_tokens", Request{PromptTokenIDs: ids, SamplingParams: SamplingParams{MaxTokens: -1}}, ErrInvalidRequest, "max_tokens"},
		{"wrong type", Request{PromptTokenIDs: ids, Extra: map[string]any{"temperature": "hot"}}, ErrInvalidRequest, "temperature"},
		{"negative temperature", Request{PromptTokenIDs: ids, SamplingParams: SamplingParams{Temperature: Float(-1)}}, ErrInvalidRequest, "temperature"},
		{"top_p out of range", Request{PromptTokenIDs: ids, SamplingParams: SamplingParams{TopP: Float(1.5)}}, ErrInvalidRequest, "top_p"},
		{"negative seed", Request{PromptTokenIDs: ids, SamplingParams: SamplingParams{Seed: Int(-3)}}, ErrInvalidRequest, "seed"},
		{"token id out of the vocabulary", Request{PromptTokenIDs: []uint32{3, 1 << 30}}, ErrInvalidRequest, ""},
		{"negative token id", Request{Extra: map[string]any{"prompt_token_ids": []int{3, -1}}}, ErrInvalidRequest, "prompt_token_ids"},
		{"empty prompt_token_ids", Request{PromptTokenIDs: []uint32{}}, ErrInvalidRequest, ""},
		{"two prompts", Request{Prompt: "hi", PromptTokenIDs: ids}, ErrInvalidRequest, "exactly one"},
		{"empty messages", Request{Messages: []Message{}}, ErrInvalidRequest, "messages"},
		{"chat field without chat", Request{PromptTokenIDs: ids, AddGenerationPrompt: Bool(true)}, ErrInvalidRequest, "add_generation_prompt"},
	}
	for _, c := range bad {
		ch, err := shared.Submit(context.Background(), c.req)
		if ch != nil || !errors.Is(err, c.want) {
			t.Errorf("%s: got (%v, %v), want %v", c.name, ch, err, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.needle) {
			t.Errorf("%s: message %q does not name %q", c.name, err, c.needle)
		}
	}
	rawBad := []struct {
		name string
		json string
		want error
	}{
		{"malformed JSON", `{"prompt": `, ErrInvalidJSON},
		{"not an object", `[1, 2]`, ErrInvalidRequest},
		{"non-UTF-8", "{\"prompt\": \"\xff\xfe\"}", ErrInvalidArgument},
		{"empty", ``, ErrInvalidJSON},
	}
	for _, c := range rawBad {
		if _, err := shared.SubmitJSON(context.Background(), []byte(c.json)); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// The fast path's own checks.
	fast := []struct {
		name string
		ids  []uint32
		p    TokenParams
	}{
		{"empty prompt", nil, TokenParams{MaxTokens: 4}},
		{"bad token id", []uint32{3, 1 << 30}, TokenParams{MaxTokens: 4}},
		{"negative max_tokens", ids, TokenParams{MaxTokens: -1}},
		{"negative temperature", ids, TokenParams{Temperature: -1}},
		{"top_p above 1", ids, TokenParams{TopP: 2}},
	}
	for _, c := range fast {
		if _, err := shared.SubmitTokens(context.Background(), c.ids, c.p); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("fast path, %s: %v, want ErrInvalidRequest", c.name, err)
		}
	}
	// The engine still works.
	p, want := prompt(t, "len4")
	ch, err := shared.SubmitTokens(context.Background(), p.IDs, TokenParams{MaxTokens: int32(len(want)), IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	equalIDs(t, "after misuse", drain(t, ch).TokenIDs, want)
}

func TestNewMisuse(t *testing.T) {
	cases := []struct {
		name string
		json string
		want error
	}{
		{"malformed", `{"model": `, ErrInvalidJSON},
		{"no model", `{}`, ErrInvalidConfig},
		{"unknown option", fmt.Sprintf(`{"model": %q, "bogus_option": 1}`, modelDir), ErrInvalidConfig},
		{"wrong type", fmt.Sprintf(`{"model": %q, "max_num_seqs": "many"}`, modelDir), ErrInvalidConfig},
		{"non-UTF-8", "{\"model\": \"\xff\xfe\"}", ErrInvalidArgument},
	}
	for _, c := range cases {
		e, err := NewJSON([]byte(c.json))
		if e != nil || !errors.Is(err, c.want) {
			t.Errorf("%s: (%v, %v), want %v", c.name, e, err, c.want)
		}
	}
	_, err := New(Config{Model: filepath.Join(t.TempDir(), "missing")})
	if s := StatusOf(err); s != StatusInvalidModel && s != StatusIO {
		t.Errorf("missing model: %v, want INVALID_MODEL or IO", err)
	}
	_, err = New(Config{Model: modelDir, Extra: map[string]any{"bogus_option": true}})
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "bogus_option") {
		t.Errorf("unknown option via Extra: %v", err)
	}
}

func TestProgress(t *testing.T) {
	var last float32
	calls := 0
	e, err := New(testConfig(), WithProgress(func(p float32, stage string) bool {
		calls++
		last = p
		return true
	}))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if calls == 0 || last != 1 {
		t.Errorf("progress called %d times, last %v", calls, last)
	}
	_, err = New(testConfig(), WithProgress(func(float32, string) bool { return false }))
	if !errors.Is(err, ErrCancelled) {
		t.Errorf("cancelled load: %v, want ErrCancelled", err)
	}
}

// longRequest generates until aborted (the model's whole context with ignore_eos).
func longRequest(t *testing.T) Request {
	info, err := shared.ModelInfo()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := prompt(t, "len4")
	return Request{PromptTokenIDs: p.IDs, SamplingParams: SamplingParams{
		MaxTokens: info.MaxModelLen - len(p.IDs), Temperature: Float(0), IgnoreEOS: true,
	}}
}

func TestContextCancelAborts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := shared.Submit(ctx, longRequest(t))
	if err != nil {
		t.Fatal(err)
	}
	first := <-ch
	if first.Final() || len(first.TokenIDs) == 0 {
		t.Fatalf("first event %+v", first)
	}
	cancel()
	res := drain(t, ch)
	if res.FinishReason != FinishAbort {
		t.Errorf("finish reason %v after cancel, want abort", res.FinishReason)
	}
	if res.Usage.CompletionTokens == 0 {
		t.Errorf("usage %+v", res.Usage)
	}

	// Generate reports the context's error.
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	gres, err := shared.Generate(ctx, longRequest(t))
	if !errors.Is(err, context.DeadlineExceeded) || gres == nil || gres.FinishReason != FinishAbort {
		t.Errorf("Generate with a deadline: %+v, %v", gres, err)
	}

	// A context already done submits nothing.
	if _, err := shared.Submit(ctx, longRequest(t)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("submit with a done context: %v", err)
	}
}

// Cancelling without ever reading the channel releases everything: the final event is
// waiting in the channel, which is closed.
func TestCancelWithoutReading(t *testing.T) {
	before := runtime.NumGoroutine()
	var chans []<-chan Event
	var cancels []context.CancelFunc
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		ch, err := shared.Submit(ctx, longRequest(t))
		if err != nil {
			t.Fatal(err)
		}
		chans = append(chans, ch)
		cancels = append(cancels, cancel)
	}
	time.Sleep(20 * time.Millisecond) // let token events fill the channels
	for _, c := range cancels {
		c()
	}
	deadline := time.Now().Add(60 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after cancelling unread requests, %d before", n, before)
	}
	aborted := 0
	for _, ch := range chans {
		var last Event
		n := 0
		for ev := range ch {
			last = ev
			n++
		}
		// Length only if the request ran to its end before the cancel reached it.
		if !last.Final() || (last.FinishReason != FinishAbort && last.FinishReason != FinishLength) {
			t.Errorf("last of %d events: %+v, want the final event", n, last)
		}
		if last.FinishReason == FinishAbort {
			aborted++
		}
	}
	if aborted == 0 {
		t.Error("no request was aborted")
	}
}

func TestPanicHookBecomesErrInternal(t *testing.T) {
	e, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	p, _ := prompt(t, "len4")
	req := Request{PromptTokenIDs: p.IDs, Extra: map[string]any{"llmrt_test_panic": true}}
	if _, err := e.Submit(context.Background(), req); !errors.Is(err, ErrInternal) {
		t.Fatalf("forced panic: %v, want ErrInternal", err)
	}
	// The engine refuses further work, with errors, not crashes.
	if _, err := e.Submit(context.Background(), Request{PromptTokenIDs: p.IDs}); err == nil {
		t.Error("a broken engine accepted a request")
	}
	if err := e.Close(); err != nil {
		t.Error(err)
	}
}

func TestClose(t *testing.T) {
	e, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var chans []<-chan Event
	for i := 0; i < 8; i++ {
		ch, err := e.Submit(context.Background(), longRequest(t))
		if err != nil {
			t.Fatal(err)
		}
		chans = append(chans, ch)
	}
	<-chans[0] // running
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for i, ch := range chans {
		res := drain(t, ch)
		if res.FinishReason != FinishAbort {
			t.Errorf("request %d: finish reason %v after Close, want abort", i, res.FinishReason)
		}
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	p, _ := prompt(t, "len4")
	if _, err := e.Submit(context.Background(), Request{PromptTokenIDs: p.IDs}); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrEngineStopped) {
		t.Errorf("Submit after Close: %v, want ErrClosed", err)
	}
	if _, err := e.SubmitTokens(context.Background(), p.IDs, TokenParams{}); !errors.Is(err, ErrClosed) {
		t.Errorf("SubmitTokens after Close: %v", err)
	}
	if _, err := e.Tokenize("hi", true); !errors.Is(err, ErrClosed) {
		t.Errorf("Tokenize after Close: %v", err)
	}
	if _, err := e.MetricsPrometheus(); !errors.Is(err, ErrClosed) {
		t.Errorf("MetricsPrometheus after Close: %v", err)
	}
	if err := e.Abort(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Abort after Close: %v", err)
	}
}

// Close racing with submitters and utility calls on many goroutines: each call either
// fails with ErrClosed or its request gets exactly one final event.
func TestCloseWhileSubmitting(t *testing.T) {
	e, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := prompt(t, "len4")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ch, err := e.SubmitTokens(context.Background(), p.IDs, TokenParams{MaxTokens: 8, IgnoreEOS: true})
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				finals := 0
				for ev := range ch {
					if ev.Final() {
						finals++
					}
				}
				if finals != 1 {
					errs <- fmt.Errorf("%d final events", finals)
					return
				}
				if _, err := e.Tokenize("The old farmer", true); err != nil && !errors.Is(err, ErrClosed) {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	e.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Many goroutines submit 256 requests at once (JSON and fast path, some cancelled, some
// not read until late): every request gets exactly one final event, its last, and the
// requests run to completion get exactly max_tokens tokens.
func TestConcurrentRequests(t *testing.T) {
	const goroutines, perGoroutine = 32, 8
	ps, _ := textPrompts()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	cancelled, completed := 0, 0
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for i := 0; i < perGoroutine; i++ {
				p := ps[rng.Intn(len(ps))]
				maxTokens := 1 + rng.Intn(48)
				ctx, cancel := context.WithCancel(context.Background())
				var ch <-chan Event
				var err error
				if rng.Intn(2) == 0 {
					ch, err = shared.SubmitTokens(ctx, p.IDs, TokenParams{MaxTokens: int32(maxTokens), IgnoreEOS: true})
				} else {
					ch, err = shared.Submit(ctx, Request{PromptTokenIDs: p.IDs, SamplingParams: greedyParams(maxTokens)})
				}
				if err != nil {
					cancel()
					fail("submit: %v", err)
					continue
				}
				cancelIt := rng.Intn(4) == 0
				if cancelIt {
					if rng.Intn(2) == 0 {
						time.Sleep(time.Duration(rng.Intn(2000)) * time.Microsecond)
					}
					cancel()
				}
				tokens, finals, afterFinal := 0, 0, 0
				var final Event
				for ev := range ch {
					if finals > 0 {
						afterFinal++
					}
					tokens += len(ev.TokenIDs)
					if ev.Final() {
						finals++
						final = ev
					}
				}
				cancel()
				if finals != 1 || afterFinal != 0 {
					fail("request %d: %d final events, %d events after it", final.RequestID, finals, afterFinal)
					continue
				}
				mu.Lock()
				if cancelIt {
					cancelled++
				} else {
					completed++
				}
				mu.Unlock()
				switch {
				case cancelIt:
					if final.FinishReason != FinishAbort && final.FinishReason != FinishLength {
						fail("cancelled request %d: finish %v", final.RequestID, final.FinishReason)
					}
				case final.FinishReason != FinishLength || tokens != maxTokens ||
					final.Usage == nil || final.Usage.CompletionTokens != uint64(maxTokens):
					fail("request %d: finish %v, %d tokens, usage %+v, want length and %d tokens",
						final.RequestID, final.FinishReason, tokens, final.Usage, maxTokens)
				}
			}
		}(g)
	}
	wg.Wait()
	for i, f := range failures {
		if i == 20 {
			t.Errorf("... %d failures in all", len(failures))
			break
		}
		t.Error(f)
	}
	if cancelled+completed != goroutines*perGoroutine {
		t.Errorf("%d cancelled + %d completed of %d", cancelled, completed, goroutines*perGoroutine)
	}
	t.Logf("%d requests, %d cancelled", cancelled+completed, cancelled)
	// The engine is idle again.
	var m struct {
		Running float64 `json:"num_requests_running"`
		Waiting float64 `json:"num_requests_waiting"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mj, err := shared.MetricsJSON()
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(mj), &m); err != nil {
			t.Fatal(err)
		}
		if m.Running == 0 && m.Waiting == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m.Running != 0 || m.Waiting != 0 {
		t.Errorf("after the stress: %v running, %v waiting", m.Running, m.Waiting)
	}
}

func TestRequestJSON(t *testing.T) {
	cases := []struct {
		req  Request
		want string
	}{
		{Request{}, `{"prompt":""}`},
		{Request{Prompt: "hi", SamplingParams: SamplingParams{MaxTokens: 4, Temperature: Float(0)}},
			`{"max_tokens":4,"prompt":"hi","temperature":0}`},
		{Request{PromptTokenIDs: []uint32{}}, `{"prompt_token_ids":[]}`},
		{Request{PromptTokenIDs: []uint32{1, 2}, Priority: -1, CacheSalt: "a", Extra: map[string]any{"x": 1}},
			`{"cache_salt":"a","priority":-1,"prompt_token_ids":[1,2],"x":1}`},
		{Request{Messages: []Message{{Role: "user", Content: "hi"}}, AddGenerationPrompt: Bool(false)},
			`{"add_generation_prompt":false,"messages":[{"content":"hi","role":"user"}]}`},
		{Request{Prompt: "hi", ReasoningParser: "qwen3", ToolCallParser: "hermes"},
			`{"prompt":"hi","reasoning_parser":"qwen3","tool_call_parser":"hermes"}`},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.req)
		if err != nil {
			t.Fatal(err)
		}
		// Normalise key order.
		var m map[string]any
		json.Unmarshal(b, &m)
		nb, _ := json.Marshal(m)
		if string(nb) != c.want {
			t.Errorf("%+v marshals to %s, want %s", c.req, nb, c.want)
		}
	}
}

// n = 2 under greedy sampling gives two sequences, each transformers' greedy tokens, told
// apart by Event.Index, each ending with its own finish reason; the final event's usage
// counts both.
func TestNGreedySequencesEqual(t *testing.T) {
	p, want := prompt(t, "len13")
	params := greedyParams(len(want))
	params.N = 2
	res, err := shared.Generate(context.Background(), Request{PromptTokenIDs: p.IDs, SamplingParams: params})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Sequences) != 2 {
		t.Fatalf("%d sequences, want 2", len(res.Sequences))
	}
	for i, s := range res.Sequences {
		if s.Index != i {
			t.Errorf("sequence %d has index %d", i, s.Index)
		}
		equalIDs(t, fmt.Sprintf("sequence %d", i), s.TokenIDs, want)
		if s.FinishReason != FinishLength {
			t.Errorf("sequence %d: finish reason %v, want length", i, s.FinishReason)
		}
	}
	if res.Sequences[0].Text != res.Sequences[1].Text || res.Text != res.Sequences[0].Text {
		t.Errorf("texts differ: %q, %q (result %q)", res.Sequences[0].Text, res.Sequences[1].Text, res.Text)
	}
	if res.Usage.CompletionTokens != uint64(2*len(want)) || res.Usage.PromptTokens != uint64(len(p.IDs)) {
		t.Errorf("usage %+v, want %d prompt and %d completion tokens", res.Usage, len(p.IDs), 2*len(want))
	}
}

// Under greedy sampling each generated token is the most likely one: rank 1 and the first
// of its top alternatives, which are sorted; the cumulative logprob is their sum.
func TestLogprobsGreedyTop1(t *testing.T) {
	p, want := prompt(t, "len13")
	params := greedyParams(len(want))
	params.Logprobs = Count(3)
	ch, err := shared.Submit(context.Background(), Request{PromptTokenIDs: p.IDs, SamplingParams: params})
	if err != nil {
		t.Fatal(err)
	}
	var lps []Logprob
	var cumulative *float64
	for ev := range ch {
		if len(ev.Logprobs) != len(ev.TokenIDs) {
			t.Fatalf("event with %d tokens and %d logprobs", len(ev.TokenIDs), len(ev.Logprobs))
		}
		lps = append(lps, ev.Logprobs...)
		if ev.CumulativeLogprob != nil {
			cumulative = ev.CumulativeLogprob
		}
	}
	if len(lps) != len(want) {
		t.Fatalf("%d logprobs, want %d", len(lps), len(want))
	}
	sum := 0.0
	for i, l := range lps {
		if l.TokenID != want[i] || l.Rank != 1 || l.Logprob > 0 {
			t.Errorf("token %d: %+v, want token %d with rank 1", i, l, want[i])
		}
		if len(l.Top) != 3 || l.Top[0].TokenID != l.TokenID || l.Top[0].Logprob != l.Logprob {
			t.Fatalf("token %d: top alternatives %+v, want 3 led by the token", i, l.Top)
		}
		for k := 1; k < len(l.Top); k++ {
			if l.Top[k].Logprob > l.Top[k-1].Logprob || l.Top[k].Rank != uint32(k+1) {
				t.Errorf("token %d: alternatives out of order: %+v", i, l.Top)
			}
		}
		sum += float64(l.Logprob)
	}
	if cumulative == nil || math.Abs(*cumulative-sum) > 1e-3 {
		t.Errorf("cumulative logprob %v, want the sum %v", cumulative, sum)
	}
}

// prompt_logprobs gives one entry per prompt token after the first, on the first event.
func TestPromptLogprobs(t *testing.T) {
	p, _ := prompt(t, "len13")
	params := greedyParams(2)
	params.PromptLogprobs = Count(2)
	ch, err := shared.Submit(context.Background(), Request{PromptTokenIDs: p.IDs, SamplingParams: params})
	if err != nil {
		t.Fatal(err)
	}
	var got []Logprob
	for i := 0; ; i++ {
		ev, ok := <-ch
		if !ok {
			break
		}
		if i > 0 && len(ev.PromptLogprobs) > 0 {
			t.Errorf("prompt logprobs on event %d", i)
		}
		got = append(got, ev.PromptLogprobs...)
	}
	if len(got) != len(p.IDs)-1 {
		t.Fatalf("%d prompt logprobs, want %d", len(got), len(p.IDs)-1)
	}
	for i, l := range got {
		if l.TokenID != p.IDs[i+1] || l.Rank < 1 || l.Logprob > 0 || len(l.Top) != 2 {
			t.Errorf("prompt entry %d: %+v, want token %d", i, l, p.IDs[i+1])
		}
	}
}

// A stop string found in the greedy text ends the sequence before it, and the event
// says which stop string it was.
func TestStopString(t *testing.T) {
	p, want := prompt(t, "len13")
	full, err := shared.Generate(context.Background(), Request{PromptTokenIDs: p.IDs, SamplingParams: greedyParams(len(want))})
	if err != nil {
		t.Fatal(err)
	}
	stop, at := asciiWord(full.Text)
	if stop == "" {
		t.Skipf("no ASCII word in the greedy text %q", full.Text)
	}
	params := greedyParams(len(want))
	params.Stop = []string{"\x00never", stop}
	res, err := shared.Generate(context.Background(), Request{PromptTokenIDs: p.IDs, SamplingParams: params})
	if err != nil {
		t.Fatal(err)
	}
	if res.FinishReason != FinishStop || res.StopString != stop || res.StopTokenID != nil {
		t.Errorf("finish %v, stop string %q, stop token %v; want stop by %q", res.FinishReason, res.StopString, res.StopTokenID, stop)
	}
	if res.Text != full.Text[:at] {
		t.Errorf("text %q, want %q (before %q)", res.Text, full.Text[:at], stop)
	}
}

// asciiWord finds the first run of two or more ASCII letters after the text's start
// (a stop string that surely ends the text there), and its byte offset.
func asciiWord(s string) (string, int) {
	start := -1
	for i := 1; i <= len(s); i++ {
		letter := i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z')
		switch {
		case letter && start < 0:
			start = i
		case !letter && start >= 0:
			if i-start >= 2 && strings.Index(s, s[start:i]) == start {
				return s[start:i], start
			}
			start = -1
		}
	}
	return "", 0
}
