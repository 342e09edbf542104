package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"llmrt.dev/llmrt"
)

// The tests run the server's handler against the real library and the tiny llama
// fixture model (override with LLMRT_TEST_MODEL), whose expected.json holds
// transformers' greedy tokens.

type fixturePrompt struct {
	Name     string          `json:"name"`
	IDs      []uint32        `json:"ids"`
	Messages []llmrt.Message `json:"messages"`
}

var (
	modelDir string
	fixture  struct {
		Prompts   []fixturePrompt `json:"prompts"`
		GreedyIDs [][]uint32      `json:"greedy_ids"`
	}
	engine  *llmrt.Engine
	testSrv *Server
	baseURL string
)

const modelName = "tiny-llama"

func TestMain(m *testing.M) {
	// Enables the library's test-only panic hook (TestHealthFailedEngine); set before any
	// library thread runs.
	os.Setenv("LLMRT_TEST_HOOKS", "1")
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	modelDir = os.Getenv("LLMRT_TEST_MODEL")
	if modelDir == "" {
		modelDir = filepath.Join("..", "..", "..", "..", "tests", "fixtures", "models", "llama")
	}
	b, err := os.ReadFile(filepath.Join(modelDir, "expected.json"))
	if err == nil {
		err = json.Unmarshal(b, &fixture)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the fixture:", err)
		return 1
	}
	engine, err = llmrt.New(llmrt.Config{Model: modelDir, NumThreads: 2})
	if err != nil {
		fmt.Fprintln(os.Stderr, "loading the fixture model:", err)
		return 1
	}
	defer engine.Close()
	var stop func()
	testSrv, baseURL, stop = startServer(serverConfig{})
	defer stop()
	return m.Run()
}

// startServer serves the shared engine with cfg (defaults filled in) on a loopback
// port, as serve does, and returns the server, its URL and its stop function.
func startServer(cfg serverConfig) (*Server, string, func()) {
	if cfg.ModelName == "" {
		cfg.ModelName = modelName
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	s, err := newServer(engine, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		panic(err)
	}
	hs := httptest.NewUnstartedServer(s.Handler())
	hs.Config.BaseContext = func(net.Listener) context.Context { return s.baseCtx }
	hs.Start()
	return s, hs.URL, func() { s.abortAll(); hs.Close() }
}

func greedy(t *testing.T, name string) (fixturePrompt, []uint32) {
	t.Helper()
	for i, p := range fixture.Prompts {
		if p.Name == name {
			return p, fixture.GreedyIDs[i]
		}
	}
	t.Fatalf("no prompt %q in expected.json", name)
	return fixturePrompt{}, nil
}

func chatFixture(t *testing.T) (fixturePrompt, []uint32) {
	t.Helper()
	for i, p := range fixture.Prompts {
		if p.Messages != nil {
			return p, fixture.GreedyIDs[i]
		}
	}
	t.Fatal("no chat prompt in expected.json")
	return fixturePrompt{}, nil
}

func detokenize(t *testing.T, ids []uint32) string {
	t.Helper()
	s, err := engine.Detokenize(ids, true)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// post sends a JSON body (a string is sent as is) and returns the status and body.
func post(t *testing.T, url, path string, body any, header ...string) (int, http.Header, []byte) {
	t.Helper()
	b, ok := body.(string)
	if !ok {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		b = string(raw)
	}
	req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func get(t *testing.T, url, path string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return v
}

// sseChunks splits a streamed body into its data chunks; it fails unless the stream
// ends with data: [DONE].
func sseChunks(t *testing.T, body []byte) []json.RawMessage {
	t.Helper()
	var chunks []json.RawMessage
	done := false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || done {
			t.Fatalf("unexpected line %q in the stream", line)
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		chunks = append(chunks, json.RawMessage(data))
	}
	if !done {
		t.Fatalf("the stream does not end with [DONE]:\n%s", body)
	}
	return chunks
}

// openAIError checks an error answer's status and OpenAI shape, and returns it.
func openAIError(t *testing.T, status int, b []byte, want int) apiError {
	t.Helper()
	if status != want {
		t.Fatalf("status %d, want %d: %s", status, want, b)
	}
	var body map[string]map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("error body %s: %v", b, err)
	}
	e, ok := body["error"]
	if !ok {
		t.Fatalf("no error object in %s", b)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e[k]; !ok {
			t.Errorf("error object %s has no %q", b, k)
		}
	}
	if m, _ := e["message"].(string); m == "" {
		t.Errorf("empty error message in %s", b)
	}
	return decode[map[string]apiError](t, b)["error"]
}

type completionAnswer struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int     `json:"index"`
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
		Logprobs     *struct {
			Tokens        []string             `json:"tokens"`
			TokenLogprobs []*float64           `json:"token_logprobs"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
			TextOffset    []int                `json:"text_offset"`
		} `json:"logprobs"`
	} `json:"choices"`
	Usage *usageInfo `json:"usage"`
}

type chatAnswer struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role             string     `json:"role"`
			Content          *string    `json:"content"`
			ReasoningContent *string    `json:"reasoning_content"`
			ToolCalls        []toolCall `json:"tool_calls"`
		} `json:"message"`
		Delta        chatDelta     `json:"delta"`
		Logprobs     *chatLogprobs `json:"logprobs"`
		FinishReason *string       `json:"finish_reason"`
	} `json:"choices"`
	Usage *usageInfo `json:"usage"`
}

func checkUsage(t *testing.T, u *usageInfo, prompt, completion int) {
	t.Helper()
	if u == nil || u.PromptTokens != uint64(prompt) || u.CompletionTokens != uint64(completion) || u.TotalTokens != uint64(prompt+completion) {
		t.Errorf("usage %+v, want %d prompt and %d completion tokens", u, prompt, completion)
	}
}

// A completion of token ids under greedy sampling is transformers' greedy text.
func TestCompletionGreedy(t *testing.T) {
	p, want := greedy(t, "len13")
	status, _, b := post(t, baseURL, "/v1/completions", map[string]any{
		"model": modelName, "prompt": p.IDs, "max_tokens": len(want), "temperature": 0, "ignore_eos": true,
	})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, b)
	}
	a := decode[completionAnswer](t, b)
	if !strings.HasPrefix(a.ID, "cmpl-") || a.Object != "text_completion" || a.Model != modelName || a.Created == 0 {
		t.Errorf("answer head %s", b)
	}
	if len(a.Choices) != 1 || a.Choices[0].Index != 0 || a.Choices[0].Logprobs != nil {
		t.Fatalf("choices %s", b)
	}
	if got := a.Choices[0].Text; got != detokenize(t, want) {
		t.Errorf("text %q, want %q", got, detokenize(t, want))
	}
	if fr := a.Choices[0].FinishReason; fr == nil || *fr != "length" {
		t.Errorf("finish reason %v, want length", fr)
	}
	checkUsage(t, a.Usage, len(p.IDs), len(want))
}

// A text prompt with a stop string: the text ends before it, finish_reason "stop".
func TestCompletionTextPromptAndStop(t *testing.T) {
	p, want := greedy(t, "len13")
	full := detokenize(t, want)
	stop := ""
	for _, w := range strings.Fields(full) {
		if len(w) >= 3 && strings.Index(full, w) > 0 {
			stop = w
			break
		}
	}
	if stop == "" {
		t.Skipf("no word to stop at in %q", full)
	}
	text, err := engine.Detokenize(p.IDs, true)
	if err != nil {
		t.Fatal(err)
	}
	status, _, b := post(t, baseURL, "/v1/completions", map[string]any{
		"prompt": text, "max_tokens": len(want), "temperature": 0, "ignore_eos": true, "stop": stop,
	})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, b)
	}
	a := decode[completionAnswer](t, b)
	c := a.Choices[0]
	if c.Text != full[:strings.Index(full, stop)] || c.FinishReason == nil || *c.FinishReason != "stop" {
		t.Errorf("text %q finish %v; want %q and stop", c.Text, c.FinishReason, full[:strings.Index(full, stop)])
	}
}

// A chat under greedy sampling is transformers' greedy answer to the fixture's chat.
func TestChatGreedy(t *testing.T) {
	p, want := chatFixture(t)
	status, _, b := post(t, baseURL, "/v1/chat/completions", map[string]any{
		"model": modelName, "messages": p.Messages, "max_completion_tokens": len(want), "temperature": 0, "ignore_eos": true,
	})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, b)
	}
	a := decode[chatAnswer](t, b)
	if !strings.HasPrefix(a.ID, "chatcmpl-") || a.Object != "chat.completion" || a.Model != modelName {
		t.Errorf("answer head %s", b)
	}
	if len(a.Choices) != 1 {
		t.Fatalf("choices %s", b)
	}
	c := a.Choices[0]
	if c.Message.Role != "assistant" || c.Message.Content == nil || *c.Message.Content != detokenize(t, want) {
		t.Errorf("message %s, want the content %q", b, detokenize(t, want))
	}
	if c.FinishReason == nil || *c.FinishReason != "length" || c.Logprobs != nil {
		t.Errorf("choice %s", b)
	}
	checkUsage(t, a.Usage, len(p.IDs), len(want))

	// Content given as parts is the same chat.
	parts := make([]map[string]any, len(p.Messages))
	for i, m := range p.Messages {
		parts[i] = map[string]any{"role": m.Role, "content": []map[string]string{{"type": "text", "text": m.Content.(string)}}}
	}
	_, _, b2 := post(t, baseURL, "/v1/chat/completions", map[string]any{
		"messages": parts, "max_tokens": len(want), "temperature": 0, "ignore_eos": true,
	})
	if got := decode[chatAnswer](t, b2); len(got.Choices) != 1 || *got.Choices[0].Message.Content != *c.Message.Content {
		t.Errorf("content parts: %s", b2)
	}
}

// Streaming gives the same text as one answer for the same seed, in chunks of the
// OpenAI shape, with a usage chunk when asked.
func TestStreamEqualsNonStream(t *testing.T) {
	p, _ := chatFixture(t)
	common := map[string]any{"messages": p.Messages, "max_tokens": 24, "temperature": 0.9, "seed": 7, "ignore_eos": true}
	_, _, b := post(t, baseURL, "/v1/chat/completions", common)
	whole := decode[chatAnswer](t, b)

	common["stream"] = true
	common["stream_options"] = map[string]bool{"include_usage": true}
	status, header, sb := post(t, baseURL, "/v1/chat/completions", common)
	if status != http.StatusOK || !strings.HasPrefix(header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, content type %q", status, header.Get("Content-Type"))
	}
	chunks := sseChunks(t, sb)
	var text strings.Builder
	var finish string
	for i, raw := range chunks[:len(chunks)-1] {
		c := decode[chatAnswer](t, raw)
		if c.Object != "chat.completion.chunk" || c.ID != decode[chatAnswer](t, chunks[0]).ID || len(c.Choices) != 1 {
			t.Fatalf("chunk %d: %s", i, raw)
		}
		if !bytes.Contains(raw, []byte(`"usage":null`)) {
			t.Errorf("chunk %d has no usage null (include_usage): %s", i, raw)
		}
		d := c.Choices[0].Delta
		if (i == 0) != (d.Role == "assistant") {
			t.Errorf("chunk %d: role %q", i, d.Role)
		}
		if d.Content != nil {
			text.WriteString(*d.Content)
		}
		if c.Choices[0].FinishReason != nil {
			finish = *c.Choices[0].FinishReason
		}
	}
	if text.String() != *whole.Choices[0].Message.Content || finish != *whole.Choices[0].FinishReason {
		t.Errorf("streamed %q (%s), whole %q (%s)", text.String(), finish, *whole.Choices[0].Message.Content, *whole.Choices[0].FinishReason)
	}
	last := decode[chatAnswer](t, chunks[len(chunks)-1])
	if len(last.Choices) != 0 || last.Usage == nil || *last.Usage != *whole.Usage {
		t.Errorf("usage chunk %s, want the usage %+v", chunks[len(chunks)-1], whole.Usage)
	}

	// Completions too.
	comp := map[string]any{"prompt": "The old farmer", "max_tokens": 24, "temperature": 0.9, "seed": 11, "ignore_eos": true}
	_, _, b = post(t, baseURL, "/v1/completions", comp)
	wholeC := decode[completionAnswer](t, b)
	comp["stream"] = true
	_, _, sb = post(t, baseURL, "/v1/completions", comp)
	text.Reset()
	for _, raw := range sseChunks(t, sb) {
		c := decode[completionAnswer](t, raw)
		if c.Object != "text_completion" || c.Usage != nil || bytes.Contains(raw, []byte(`"usage"`)) {
			t.Errorf("chunk %s", raw)
		}
		text.WriteString(c.Choices[0].Text)
	}
	if text.String() != wholeC.Choices[0].Text {
		t.Errorf("streamed %q, whole %q", text.String(), wholeC.Choices[0].Text)
	}
}

// n = 2 under greedy sampling: two choices, numbered, with the same text; streamed too.
func TestN2(t *testing.T) {
	p, want := greedy(t, "len4")
	_, _, b := post(t, baseURL, "/v1/completions", map[string]any{
		"prompt": p.IDs, "max_tokens": 8, "temperature": 0, "ignore_eos": true, "n": 2,
	})
	a := decode[completionAnswer](t, b)
	if len(a.Choices) != 2 || a.Choices[0].Index != 0 || a.Choices[1].Index != 1 {
		t.Fatalf("choices %s", b)
	}
	for _, c := range a.Choices {
		if c.Text != detokenize(t, want[:8]) {
			t.Errorf("choice %d: %q, want %q", c.Index, c.Text, detokenize(t, want[:8]))
		}
	}
	checkUsage(t, a.Usage, len(p.IDs), 16)

	// Two prompts of two choices each: choices 0..3, numbered prompt by prompt.
	_, _, b = post(t, baseURL, "/v1/completions", map[string]any{
		"prompt": []string{"The old", "The river"}, "max_tokens": 4, "temperature": 0, "ignore_eos": true, "n": 2,
	})
	a = decode[completionAnswer](t, b)
	if len(a.Choices) != 4 || a.Choices[0].Text != a.Choices[1].Text || a.Choices[2].Text != a.Choices[3].Text || a.Usage.CompletionTokens != 16 {
		t.Errorf("two prompts, n=2: %s", b)
	}

	c, _ := chatFixture(t)
	_, _, sb := post(t, baseURL, "/v1/chat/completions", map[string]any{
		"messages": c.Messages, "max_tokens": 6, "temperature": 0, "ignore_eos": true, "n": 2, "stream": true,
	})
	texts := map[int]string{}
	finished := map[int]bool{}
	for _, raw := range sseChunks(t, sb) {
		ch := decode[chatAnswer](t, raw).Choices[0]
		if ch.Delta.Content != nil {
			texts[ch.Index] += *ch.Delta.Content
		}
		finished[ch.Index] = finished[ch.Index] || ch.FinishReason != nil
	}
	if len(texts) != 2 || texts[0] != texts[1] || texts[0] == "" || !finished[0] || !finished[1] {
		t.Errorf("streamed n=2: texts %q, finished %v", texts, finished)
	}
}

// Chat logprobs: one entry per token, with bytes and top_logprobs, the greedy token
// first among them.
func TestChatLogprobs(t *testing.T) {
	p, want := chatFixture(t)
	for _, stream := range []bool{false, true} {
		_, _, b := post(t, baseURL, "/v1/chat/completions", map[string]any{
			"messages": p.Messages, "max_tokens": 6, "temperature": 0, "ignore_eos": true,
			"logprobs": true, "top_logprobs": 3, "stream": stream,
		})
		var entries []chatTokenLogprob
		if stream {
			for _, raw := range sseChunks(t, b) {
				c := decode[chatAnswer](t, raw).Choices[0]
				if c.Logprobs != nil {
					entries = append(entries, c.Logprobs.Content...)
				}
			}
		} else {
			entries = decode[chatAnswer](t, b).Choices[0].Logprobs.Content
		}
		if len(entries) != 6 {
			t.Fatalf("stream %v: %d logprob entries, want 6: %s", stream, len(entries), b)
		}
		for i, e := range entries {
			tok, _ := engine.Detokenize(want[i:i+1], false)
			if e.Token != tok || e.Logprob > 0 || string(bytesOf(e.Bytes)) != e.Token || len(e.TopLogprobs) != 3 {
				t.Errorf("stream %v, token %d: %+v, want %q", stream, i, e, tok)
				continue
			}
			if e.TopLogprobs[0].Token != e.Token || e.TopLogprobs[0].Logprob != e.Logprob || e.TopLogprobs[1].Logprob > e.TopLogprobs[0].Logprob {
				t.Errorf("stream %v, token %d: top_logprobs %+v", stream, i, e.TopLogprobs)
			}
		}
	}
	// The raw shape: logprobs {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}.
	_, _, b := post(t, baseURL, "/v1/chat/completions", map[string]any{
		"messages": p.Messages, "max_tokens": 1, "logprobs": true,
	})
	raw := decode[struct {
		Choices []struct {
			Logprobs struct {
				Content []map[string]json.RawMessage `json:"content"`
			} `json:"logprobs"`
		} `json:"choices"`
	}](t, b)
	e := raw.Choices[0].Logprobs.Content[0]
	if len(e) != 4 || string(e["top_logprobs"]) != "[]" || e["bytes"][0] != '[' {
		t.Errorf("entry shape %s", b)
	}
}

func bytesOf(ints []int) []byte {
	b := make([]byte, len(ints))
	for i, v := range ints {
		b[i] = byte(v)
	}
	return b
}

// Completions logprobs: parallel lists of tokens, logprobs, top alternatives and text
// offsets; with echo, the prompt's tokens first (the very first without a logprob).
func TestCompletionLogprobs(t *testing.T) {
	p, want := greedy(t, "len4")
	_, _, b := post(t, baseURL, "/v1/completions", map[string]any{
		"prompt": p.IDs, "max_tokens": 5, "temperature": 0, "ignore_eos": true, "logprobs": 2,
	})
	lp := decode[completionAnswer](t, b).Choices[0].Logprobs
	if lp == nil || len(lp.Tokens) != 5 || len(lp.TokenLogprobs) != 5 || len(lp.TopLogprobs) != 5 || len(lp.TextOffset) != 5 {
		t.Fatalf("logprobs %s", b)
	}
	for i := range lp.Tokens {
		tok, _ := engine.Detokenize(want[i:i+1], false)
		top := lp.TopLogprobs[i]
		if lp.Tokens[i] != tok || lp.TokenLogprobs[i] == nil || top[tok] != *lp.TokenLogprobs[i] || len(top) < 2 || len(top) > 3 {
			t.Errorf("token %d: %q %v %v, want %q first of its alternatives", i, lp.Tokens[i], lp.TokenLogprobs[i], top, tok)
		}
		if i > 0 && lp.TextOffset[i] != lp.TextOffset[i-1]+len([]rune(lp.Tokens[i-1])) {
			t.Errorf("text offsets %v for tokens %q", lp.TextOffset, lp.Tokens)
		}
	}

	_, _, b = post(t, baseURL, "/v1/completions", map[string]any{
		"prompt": p.IDs, "max_tokens": 3, "temperature": 0, "ignore_eos": true, "logprobs": 1, "echo": true,
	})
	c := decode[completionAnswer](t, b).Choices[0]
	prompt, _ := engine.Detokenize(p.IDs, false)
	if !strings.HasPrefix(c.Text, prompt) || c.Text != prompt+detokenize(t, want[:3]) {
		t.Errorf("echo text %q, want %q + the completion", c.Text, prompt)
	}
	if n := len(p.IDs) + 3; c.Logprobs == nil || len(c.Logprobs.Tokens) != n || c.Logprobs.TokenLogprobs[0] != nil || c.Logprobs.TokenLogprobs[1] == nil {
		t.Errorf("echo logprobs %s, want %d entries, the first null", b, n)
	}
}

// Bad requests get 400 (or 404, 413, ...) with an OpenAI error body naming the field,
// and the server keeps serving.
func TestBadRequests(t *testing.T) {
	long := `{"prompt": "` + strings.Repeat("x", 2<<20) + `"}`
	cases := []struct {
		name, path string
		body       any
		status     int
		param      string
	}{
		{"invalid JSON", "/v1/completions", `{"prompt": `, 400, ""},
		{"not an object", "/v1/chat/completions", `[1, 2]`, 400, ""},
		{"wrong type", "/v1/completions", `{"prompt": "hi", "temperature": "hot"}`, 400, "temperature"},
		{"unknown model", "/v1/completions", map[string]any{"model": "gpt-5", "prompt": "hi"}, 400, "model"},
		{"unknown model (chat)", "/v1/chat/completions", map[string]any{"model": "gpt-5", "messages": []map[string]string{{"role": "user", "content": "hi"}}}, 400, "model"},
		{"n = 0", "/v1/completions", map[string]any{"prompt": "hi", "n": 0}, 400, "n"},
		{"negative max_tokens", "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"},
		{"max_completion_tokens 0", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "max_completion_tokens": 0}, 400, "max_completion_tokens"},
		{"library validation", "/v1/completions", map[string]any{"prompt": "hi", "top_p": 1.5}, 400, "top_p"},
		{"library: logprobs too many", "/v1/completions", map[string]any{"prompt": "hi", "logprobs": 50}, 400, "logprobs"},
		{"token id out of the vocabulary", "/v1/completions", map[string]any{"prompt": []int{1, 1 << 30}}, 400, ""},
		{"no prompt", "/v1/completions", map[string]any{"max_tokens": 3}, 400, "prompt"},
		{"empty prompt list", "/v1/completions", map[string]any{"prompt": []string{}}, 400, "prompt"},
		{"suffix", "/v1/completions", map[string]any{"prompt": "hi", "suffix": "end"}, 400, "suffix"},
		{"bad logit_bias key", "/v1/completions", map[string]any{"prompt": "hi", "logit_bias": map[string]float64{"x": 1}}, 400, "logit_bias"},
		{"stream_options without stream", "/v1/completions", map[string]any{"prompt": "hi", "stream_options": map[string]bool{"include_usage": true}}, 400, "stream_options"},
		{"no messages", "/v1/chat/completions", map[string]any{"messages": []any{}}, 400, "messages"},
		{"image content", "/v1/chat/completions", map[string]any{"messages": []map[string]any{{"role": "user", "content": []map[string]any{{"type": "image_url"}}}}}, 400, "messages"},
		{"top_logprobs without logprobs", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "top_logprobs": 2}, 400, "top_logprobs"},
		{"top_logprobs too many", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "logprobs": true, "top_logprobs": 21}, 400, "top_logprobs"},
		{"auto tool choice without a parser", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "tools": []map[string]any{{"type": "function", "function": map[string]string{"name": "f"}}}}, 400, "tool_choice"},
		{"tool_choice without tools", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "tool_choice": "required"}, 400, "tool_choice"},
		{"response_format type", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "response_format": map[string]string{"type": "yaml"}}, 400, "response_format.type"},
		{"invalid schema", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x", "schema": map[string]any{"type": 5}}}}, 400, "structured_outputs.json"},
		{"invalid regex", "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "structured_outputs": map[string]string{"regex": "(a"}}, 400, "structured_outputs.regex"},
		{"body too large", "/v1/completions", long, 413, ""},
	}
	p, want := greedy(t, "len4")
	for _, c := range cases {
		status, _, b := post(t, baseURL, c.path, c.body)
		e := openAIError(t, status, b, c.status)
		if c.param != "" && (e.Param == nil || *e.Param != c.param) {
			t.Errorf("%s: param %v, want %q: %s", c.name, e.Param, c.param, b)
		}
		if c.status == 400 && e.Type != "invalid_request_error" {
			t.Errorf("%s: type %q", c.name, e.Type)
		}
		if strings.HasPrefix(c.name, "unknown model") && (e.Code == nil || *e.Code != "model_not_found") {
			t.Errorf("%s: code %v, want model_not_found", c.name, e.Code)
		}
		// Still serving.
		_, _, b = post(t, baseURL, "/v1/completions", map[string]any{"prompt": p.IDs, "max_tokens": 2, "temperature": 0, "ignore_eos": true})
		if got := decode[completionAnswer](t, b); len(got.Choices) != 1 || got.Choices[0].Text != detokenize(t, want[:2]) {
			t.Fatalf("after %s: %s", c.name, b)
		}
	}
}

func TestRoutes(t *testing.T) {
	status, _, b := get(t, baseURL, "/v1/nope")
	openAIError(t, status, b, http.StatusNotFound)
	status, _, b = post(t, baseURL, "/v2/completions", `{}`)
	openAIError(t, status, b, http.StatusNotFound)
	status, header, b := get(t, baseURL, "/v1/completions")
	openAIError(t, status, b, http.StatusMethodNotAllowed)
	if header.Get("Allow") != http.MethodPost {
		t.Errorf("Allow %q", header.Get("Allow"))
	}
}

func TestModelsHealthMetrics(t *testing.T) {
	status, _, b := get(t, baseURL, "/v1/models")
	if status != http.StatusOK {
		t.Fatalf("models: %d %s", status, b)
	}
	models := decode[modelList](t, b)
	if models.Object != "list" || len(models.Data) != 1 || models.Data[0].ID != modelName || models.Data[0].Object != "model" ||
		models.Data[0].OwnedBy == "" || models.Data[0].Created == 0 || models.Data[0].MaxModelLen <= 0 {
		t.Errorf("models %s", b)
	}
	status, _, b = get(t, baseURL, "/v1/models/"+modelName)
	if card := decode[modelCard](t, b); status != http.StatusOK || card != models.Data[0] {
		t.Errorf("model card: %d %s", status, b)
	}
	status, _, b = get(t, baseURL, "/v1/models/other")
	openAIError(t, status, b, http.StatusNotFound)
	if status, _, b := get(t, baseURL, "/health"); status != http.StatusOK {
		t.Errorf("health: %d %s", status, b)
	}
	if status, _, b := get(t, baseURL, "/version"); status != http.StatusOK || decode[map[string]string](t, b)["version"] != llmrt.Version() {
		t.Errorf("version: %d %s", status, b)
	}
	status, header, b := get(t, baseURL, "/metrics")
	if status != http.StatusOK || !strings.HasPrefix(header.Get("Content-Type"), "text/plain") {
		t.Fatalf("metrics: %d %q", status, header.Get("Content-Type"))
	}
	for _, want := range []string{"# TYPE llmrt_", "llmrt_server_requests_in_flight 0", "llmrt_server_requests_rejected_total"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestAPIKey(t *testing.T) {
	_, url, stop := startServer(serverConfig{APIKey: "sk-test"})
	defer stop()
	body := map[string]any{"prompt": "hi", "max_tokens": 1}
	for _, h := range [][]string{nil, {"Authorization", "Bearer sk-wrong"}, {"Authorization", "sk-test"}} {
		status, _, b := post(t, url, "/v1/completions", body, h...)
		if e := openAIError(t, status, b, http.StatusUnauthorized); e.Code == nil || *e.Code != "invalid_api_key" {
			t.Errorf("header %v: %s", h, b)
		}
	}
	if status, _, b := get(t, url, "/v1/models"); status != http.StatusUnauthorized {
		t.Errorf("models without a key: %d %s", status, b)
	}
	if status, _, b := post(t, url, "/v1/completions", body, "Authorization", "Bearer sk-test"); status != http.StatusOK {
		t.Errorf("with the key: %d %s", status, b)
	}
	// Probes need no key.
	if status, _, _ := get(t, url, "/health"); status != http.StatusOK {
		t.Errorf("health without a key: %d", status)
	}
	if status, _, _ := get(t, url, "/metrics"); status != http.StatusOK {
		t.Errorf("metrics without a key: %d", status)
	}
}

// longStream starts a streamed completion that runs for many seconds (256 sequences to
// the end of the context) and returns once its first chunk has come; cancel the context
// or close the body to leave it.
func longStream(t *testing.T, ctx context.Context, url string) (*http.Response, *bufio.Reader) {
	t.Helper()
	body := `{"prompt": "The old farmer", "max_tokens": 480, "n": 256, "ignore_eos": true, "stream": true}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("long stream: %d %s", resp.StatusCode, b)
	}
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first line %q, %v", line, err)
	}
	return resp, r
}

type engineMetrics struct {
	Running  float64 `json:"num_requests_running"`
	Waiting  float64 `json:"num_requests_waiting"`
	Aborted  float64 `json:"requests_aborted"`
	Finished float64 `json:"requests_finished"`
}

func metricsNow(t *testing.T) engineMetrics {
	t.Helper()
	mj, err := engine.MetricsJSON()
	if err != nil {
		t.Fatal(err)
	}
	return decode[engineMetrics](t, []byte(mj))
}

// waitMetrics polls the engine's metrics until ok holds (30 s at most).
func waitMetrics(t *testing.T, what string, ok func(engineMetrics) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := metricsNow(t)
		if ok(m) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: metrics %+v", what, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A client that goes away aborts its request in the engine.
func TestDisconnectAborts(t *testing.T) {
	before := metricsNow(t)
	ctx, cancel := context.WithCancel(context.Background())
	resp, _ := longStream(t, ctx, baseURL)
	if m := metricsNow(t); m.Running+m.Waiting == 0 {
		t.Fatalf("the request does not run: %+v", m)
	}
	cancel()
	resp.Body.Close()
	waitMetrics(t, "after the disconnect", func(m engineMetrics) bool {
		return m.Aborted == before.Aborted+1 && m.Running == 0 && m.Waiting == 0
	})
	waitIdle(t, testSrv)
}

func waitIdle(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.inFlight.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests still in flight", s.inFlight.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Beyond MaxInFlight requests the server answers 503 with Retry-After, and serves
// again once there is room.
func TestOverload(t *testing.T) {
	s, url, stop := startServer(serverConfig{MaxInFlight: 1})
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	resp, _ := longStream(t, ctx, url)
	status, header, b := post(t, url, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 1})
	if e := openAIError(t, status, b, http.StatusServiceUnavailable); header.Get("Retry-After") == "" || e.Code == nil || *e.Code != "overloaded" {
		t.Errorf("overloaded answer: Retry-After %q, %s", header.Get("Retry-After"), b)
	}
	// Probes are not generations: they still answer.
	if status, _, _ := get(t, url, "/health"); status != http.StatusOK {
		t.Errorf("health while overloaded: %d", status)
	}
	cancel()
	resp.Body.Close()
	waitIdle(t, s)
	if status, _, b := post(t, url, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 1}); status != http.StatusOK {
		t.Errorf("after the overload: %d %s", status, b)
	}
	if _, _, m := get(t, url, "/metrics"); !bytes.Contains(m, []byte("llmrt_server_requests_rejected_total 1")) {
		t.Errorf("rejections not counted")
	}
}

// /health reports an engine that failed (a panic inside the library) with 503.
func TestHealthFailedEngine(t *testing.T) {
	eng, err := llmrt.New(llmrt.Config{Model: modelDir, NumThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	s, err := newServer(eng, serverConfig{ModelName: "m", MaxInFlight: 4, MaxBodyBytes: 1 << 20}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	defer hs.Close()
	if status, _, _ := get(t, hs.URL, "/health"); status != http.StatusOK {
		t.Fatalf("health before: %d", status)
	}
	if _, err := eng.Submit(context.Background(), llmrt.Request{Prompt: "hi", Extra: map[string]any{"llmrt_test_panic": true}}); err == nil {
		t.Fatal("the panic hook did not fail the request")
	}
	status, _, b := get(t, hs.URL, "/health")
	openAIError(t, status, b, http.StatusServiceUnavailable)
	// Requests get an error, not a hang or a crash.
	status, _, b = post(t, hs.URL, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 1})
	openAIError(t, status, b, http.StatusInternalServerError)
}

// Shutdown lets a running request finish within the grace period, refuses new
// connections, and returns nil.
func TestShutdownGraceful(t *testing.T) {
	s, err := newServer(engine, serverConfig{ModelName: modelName, MaxInFlight: 8, MaxBodyBytes: 1 << 20}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.serve(ctx, ln, time.Minute) }()

	// A request of about half a second (8 sequences to the end of the context).
	body := `{"prompt": "The old farmer", "max_tokens": 480, "n": 8, "ignore_eos": true, "stream": true}`
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	stop()
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	chunks := sseChunks(t, rest)
	if bytes.Contains(rest, []byte(`"error"`)) || len(chunks) == 0 {
		t.Errorf("the request did not finish cleanly: %d chunks, %.300s", len(chunks), rest)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	if _, err := http.Get(url + "/health"); err == nil {
		t.Error("the server still accepts connections")
	}
}

// Past the grace period the requests still running are aborted: a stream ends with an
// error chunk and [DONE], and serve returns nil.
func TestShutdownAbortsAfterGrace(t *testing.T) {
	before := metricsNow(t)
	s, err := newServer(engine, serverConfig{ModelName: modelName, MaxInFlight: 8, MaxBodyBytes: 1 << 20}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.serve(ctx, ln, 100*time.Millisecond) }()
	resp, r := longStream(t, context.Background(), "http://"+ln.Addr().String())
	defer resp.Body.Close()
	start := time.Now()
	stop()
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	chunks := sseChunks(t, rest)
	last := chunks[len(chunks)-1]
	if !bytes.Contains(last, []byte(`"error"`)) || !bytes.Contains(last, []byte("shutting down")) {
		t.Errorf("last chunk %s, want the shutdown error", last)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not return")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	waitMetrics(t, "after the shutdown", func(m engineMetrics) bool {
		return m.Aborted == before.Aborted+1 && m.Running == 0 && m.Waiting == 0
	})
}

// The structured-output fields map to the library's structured_outputs, which
// constrains the answer.
func TestStructuredOutputsReachTheLibrary(t *testing.T) {
	p, _ := chatFixture(t)
	schema := map[string]any{"type": "object", "properties": map[string]any{"a": map[string]string{"type": "integer"}}, "required": []string{"a"}}
	bodies := []map[string]any{
		{"response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x", "schema": schema}}},
		{"response_format": map[string]any{"type": "json_object"}},
		{"structured_outputs": map[string]any{"choice": []string{"yes", "no"}}},
		{"guided_regex": "[a-z]+"},
	}
	valid := []func(string) bool{
		func(s string) bool { var v struct{ A *int }; return json.Unmarshal([]byte(s), &v) == nil && v.A != nil },
		func(s string) bool { var v map[string]any; return json.Unmarshal([]byte(s), &v) == nil },
		func(s string) bool { return s == "yes" || s == "no" },
		regexp.MustCompile(`^[a-z]+$`).MatchString,
	}
	for i, extra := range bodies {
		body := map[string]any{"messages": p.Messages, "max_tokens": 40, "temperature": 0}
		for k, v := range extra {
			body[k] = v
		}
		status, _, b := post(t, baseURL, "/v1/chat/completions", body)
		if status != http.StatusOK {
			t.Errorf("%v: %d %s", extra, status, b)
			continue
		}
		c := decode[chatAnswer](t, b).Choices[0]
		if *c.FinishReason == "stop" && !valid[i](*c.Message.Content) {
			t.Errorf("%v: the answer %q breaks the constraint", extra, *c.Message.Content)
		}
	}
}

func TestPlanStructuredOutputs(t *testing.T) {
	schema := json.RawMessage(`{"type":"object"}`)
	cases := []struct {
		req  commonRequest
		want string
	}{
		{commonRequest{}, ""},
		{commonRequest{ResponseFormat: &responseFormat{Type: "text"}}, ""},
		{commonRequest{ResponseFormat: &responseFormat{Type: "json_object"}}, `{"json_object":true}`},
		{commonRequest{ResponseFormat: &responseFormat{Type: "json_schema", JSONSchema: &struct {
			Name   string          `json:"name"`
			Schema json.RawMessage `json:"schema"`
		}{Name: "x", Schema: schema}}}, `{"json":{"type":"object"}}`},
		{commonRequest{StructuredOutputs: json.RawMessage(`{"regex":"a+"}`), ResponseFormat: &responseFormat{Type: "json_object"}}, `{"regex":"a+"}`},
		{commonRequest{GuidedChoice: []string{"a", "b"}}, `{"choice":["a","b"]}`},
	}
	for i, c := range cases {
		got, err := c.req.structuredOutputs()
		if err != nil || string(got) != c.want {
			t.Errorf("case %d: %s, %v; want %s", i, got, err, c.want)
		}
	}
	if _, err := (&commonRequest{ResponseFormat: &responseFormat{Type: "json_schema"}}).structuredOutputs(); err == nil {
		t.Error("json_schema without a schema accepted")
	}
}

func TestPlanTools(t *testing.T) {
	tools := []tool{
		{Type: "function", Function: functionDef{Name: "get_weather", Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`)}},
		{Type: "function", Function: functionDef{Name: "now"}},
	}
	plan, err := planTools(tools, json.RawMessage(`"required"`), true)
	if err != nil || plan.mode != toolsRequired {
		t.Fatalf("required: %+v %v", plan, err)
	}
	var so struct {
		JSON struct {
			Type     string `json:"type"`
			MinItems int    `json:"minItems"`
			Items    struct {
				AnyOf []struct {
					Properties struct {
						Name struct {
							Enum []string `json:"enum"`
						} `json:"name"`
						Parameters json.RawMessage `json:"parameters"`
					} `json:"properties"`
				} `json:"anyOf"`
			} `json:"items"`
		} `json:"json"`
	}
	if err := json.Unmarshal(plan.schema, &so); err != nil || so.JSON.Type != "array" || so.JSON.MinItems != 1 || len(so.JSON.Items.AnyOf) != 2 ||
		so.JSON.Items.AnyOf[0].Properties.Name.Enum[0] != "get_weather" || string(so.JSON.Items.AnyOf[1].Properties.Parameters) != `{"type":"object"}` {
		t.Errorf("required schema %s", plan.schema)
	}
	calls, ok := plan.toolCalls(`[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "now", "parameters": {}}]`)
	if !ok || len(calls) != 2 || calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city":"Paris"}` ||
		!strings.HasPrefix(calls[0].ID, "call_") || calls[1].Function.Arguments != `{}` || plan.finishReason(llmrt.FinishStop, ok) != "tool_calls" {
		t.Errorf("required calls %+v", calls)
	}
	if _, ok := plan.toolCalls(`[{"name": "get_weather", "param`); ok {
		t.Error("a cut-short answer parsed as calls")
	}

	if one, _ := planTools(tools, json.RawMessage(`"required"`), false); !strings.Contains(string(one.schema), `"maxItems":1`) {
		t.Errorf("parallel_tool_calls false: %s", one.schema)
	}
	plan, err = planTools(tools, json.RawMessage(`{"type": "function", "function": {"name": "get_weather"}}`), true)
	if err != nil || plan.mode != toolsNamed || !strings.Contains(string(plan.schema), `"city"`) {
		t.Fatalf("named: %+v %v", plan, err)
	}
	calls, ok = plan.toolCalls(`{"city": "Paris"}`)
	if !ok || len(calls) != 1 || calls[0].Function.Name != "get_weather" || plan.finishReason(llmrt.FinishStop, ok) != "stop" {
		t.Errorf("named calls %+v", calls)
	}
	for _, bad := range []string{`"sometimes"`, `{"type": "function", "function": {"name": "nope"}}`, `{"type": "function"}`, `3`} {
		if _, err := planTools(tools, json.RawMessage(bad), true); err == nil {
			t.Errorf("tool_choice %s accepted", bad)
		}
	}
	if plan, err := planTools(tools, nil, true); err != nil || plan.mode != toolsAuto || plan.forced() {
		t.Errorf("default with tools: %+v %v", plan, err)
	}
	if plan, err := planTools(nil, json.RawMessage(`"none"`), true); err != nil || plan.mode != toolsNone {
		t.Errorf("none: %+v %v", plan, err)
	}
}

// A forced tool_choice reaches the library as structured_outputs; the answer is the
// calls (finish_reason tool_calls) unless max_tokens cuts it short.
func TestToolChoiceRequired(t *testing.T) {
	body := map[string]any{
		"messages":    []map[string]string{{"role": "user", "content": "Weather in Paris?"}},
		"tools":       []map[string]any{{"type": "function", "function": map[string]any{"name": "get_weather", "parameters": map[string]any{"type": "object", "properties": map[string]any{"city": map[string]string{"type": "string"}}, "required": []string{"city"}}}}},
		"tool_choice": "required",
		"max_tokens":  60,
		"temperature": 0,
	}
	status, _, b := post(t, baseURL, "/v1/chat/completions", body)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, b)
	}
	a := decode[chatAnswer](t, b)
	c := a.Choices[0]
	if *c.FinishReason == "tool_calls" && (len(c.Message.ToolCalls) == 0 || c.Message.Content != nil || c.Message.ToolCalls[0].Function.Name != "get_weather") {
		t.Errorf("tool calls answer %s", b)
	}
}

func TestParamOf(t *testing.T) {
	cases := map[string]string{
		"invalid request: unknown field `structured_outputs`":                      "structured_outputs",
		"invalid request: n must be in 1..=256, got 0":                             "n",
		"invalid request: `top_k` must be an integer":                              "top_k",
		"invalid request: top_p must be in (0, 1], got 1.5":                        "top_p",
		"invalid request: structured_outputs.regex: cannot compile the regex: (a":  "structured_outputs.regex",
		"invalid request: the prompt (600 tokens) is longer than the model allows": "",
	}
	for msg, want := range cases {
		if got := paramOf(msg); got != want {
			t.Errorf("paramOf(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestFlags(t *testing.T) {
	o, err := parseFlags([]string{"--model", "/m/SmolLM2.gguf", "--port", "0", "--max-num-seqs", "4", "--max-waiting-requests", "2",
		"--no-enable-prefix-caching", "--api-key", "k"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg, sc := o.engineConfig(), o.serverConfig()
	if o.host != "127.0.0.1" || sc.ModelName != "SmolLM2.gguf" || sc.MaxInFlight != 6 || sc.APIKey != "k" ||
		cfg.MaxNumSeqs != 4 || cfg.EnablePrefixCaching == nil || *cfg.EnablePrefixCaching || cfg.Seed != nil {
		t.Errorf("options %+v, engine %+v, server %+v", o, cfg, sc)
	}
	o, err = parseFlags([]string{"--model", "m", "--reasoning-parser", "qwen3", "--tool-call-parser", "hermes", "--enable-auto-tool-choice"}, io.Discard)
	if sc := o.serverConfig(); err != nil || sc.ReasoningParser != "qwen3" || sc.ToolCallParser != "hermes" || !sc.AutoToolChoice {
		t.Errorf("parsers: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{}, {"--model", "m", "extra"}, {"--model", "m", "--max-waiting-requests", "-1"}, {"--bogus"},
		{"--model", "m", "--enable-auto-tool-choice"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
