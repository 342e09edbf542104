package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"llmrt.dev/llmrt"
)

// chatJob is a chat request on its way.
type chatJob struct {
	s            *Server
	tools        toolPlan
	numChoices   int
	logprobs     bool
	includeUsage bool
}

func (s *Server) chatCompletions(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	job, g, err := s.planChat(&req)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	events, err := s.start(ctx, cancel, g)
	if err != nil {
		writeError(w, err)
		return
	}
	head := chatResponse{ID: newID("chatcmpl-"), Created: time.Now().Unix(), Model: s.cfg.ModelName}
	if req.Stream {
		job.stream(ctx, newSSE(w), events, head)
		return
	}
	job.answer(ctx, w, events, head)
}

// planChat checks a chat request and turns it into an engine request.
func (s *Server) planChat(req *chatRequest) (*chatJob, *generation, *apiError) {
	if err := s.checkModel(req.Model); err != nil {
		return nil, nil, err
	}
	maxTokens, err := s.chatMaxTokens(req)
	if err != nil {
		return nil, nil, err
	}
	includeUsage, err := req.streamUsage()
	if err != nil {
		return nil, nil, err
	}
	messages, err := chatMessages(req.Messages)
	if err != nil {
		return nil, nil, err
	}
	params, extra, err := req.samplingParams(maxTokens)
	if err != nil {
		return nil, nil, err
	}
	if params.Logprobs, err = chatLogprobsParam(req); err != nil {
		return nil, nil, err
	}
	parallel := req.ParallelToolCalls == nil || *req.ParallelToolCalls
	tools, err := planTools(req.Tools, req.ToolChoice, parallel)
	if err != nil {
		return nil, nil, err
	}
	if tools.mode == toolsAuto && !(s.cfg.AutoToolChoice && s.cfg.ToolCallParser != "") {
		// vLLM's answer, word for word: "auto" is also the default when tools are given.
		return nil, nil, badRequest("tool_choice", "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set")
	}
	if err := chatConstraint(req, tools, extra); err != nil {
		return nil, nil, err
	}
	lr := llmrt.Request{
		Messages: messages, AddGenerationPrompt: req.AddGenerationPrompt, ChatTemplateKwargs: req.ChatTemplateKwargs,
		Priority: req.Priority, CacheSalt: req.CacheSalt, SamplingParams: params, Extra: extra,
	}
	lr.ReasoningParser, lr.ToolCallParser = s.outputParsers(tools)
	if len(req.Tools) > 0 {
		lr.Tools = marshalRaw(req.Tools) // the chat template renders them
	}
	job := &chatJob{s: s, tools: tools, numChoices: params.N, logprobs: params.Logprobs != nil, includeUsage: includeUsage}
	return job, &generation{requests: []llmrt.Request{lr}, n: params.N}, nil
}

// chatMaxTokens is max_completion_tokens, else max_tokens (its older name), else the
// model's context length: the library stops a sequence at the end of the context, so
// an unset limit means "until the model stops", as in OpenAI's API.
func (s *Server) chatMaxTokens(req *chatRequest) (int, *apiError) {
	if err := checkMaxTokens("max_completion_tokens", req.MaxCompletionTokens); err != nil {
		return 0, err
	}
	if err := checkMaxTokens("max_tokens", req.MaxTokens); err != nil {
		return 0, err
	}
	switch {
	case req.MaxCompletionTokens != nil:
		return *req.MaxCompletionTokens, nil
	case req.MaxTokens != nil:
		return *req.MaxTokens, nil
	}
	return s.maxModelLen, nil
}

// chatLogprobsParam maps logprobs (bool) and top_logprobs (0..20) to llmrt's logprobs.
func chatLogprobsParam(req *chatRequest) (*int, *apiError) {
	if req.TopLogprobs != nil && !req.Logprobs {
		return nil, badRequest("top_logprobs", "top_logprobs needs logprobs set to true")
	}
	if !req.Logprobs {
		return nil, nil
	}
	k := deref(req.TopLogprobs)
	if k < 0 || k > maxTopLogprobs {
		return nil, badRequest("top_logprobs", "top_logprobs must be in 0..%d, got %d", maxTopLogprobs, k)
	}
	return &k, nil
}

// chatConstraint adds the request's output constraint: response_format or
// structured_outputs, or the one a forced tool_choice needs.
func chatConstraint(req *chatRequest, tools toolPlan, extra map[string]any) *apiError {
	so, err := req.structuredOutputs()
	if err != nil {
		return err
	}
	if tools.forced() {
		if so != nil {
			return badRequest("tool_choice", "a forced tool_choice cannot be combined with response_format or structured_outputs")
		}
		so = tools.schema
	}
	withStructuredOutputs(extra, so)
	return nil
}

// outputParsers names the library's parsers a chat request asks for: the reasoning
// parser always (when configured), the tool-call parser under tool_choice auto only
// ("none" does not parse calls; a forced answer is JSON the server reads itself, as
// vLLM does).
func (s *Server) outputParsers(tools toolPlan) (reasoning, toolCalls string) {
	if tools.mode == toolsAuto {
		toolCalls = s.cfg.ToolCallParser
	}
	return s.cfg.ReasoningParser, toolCalls
}

// chatMessages converts OpenAI messages to the library's: content parts are joined
// into one string (chat templates expect text), "developer" is "system" to templates,
// and tool-call arguments become objects (templates render them with tojson).
func chatMessages(in []chatMessageIn) ([]llmrt.Message, *apiError) {
	if len(in) == 0 {
		return nil, badRequest("messages", "messages must not be empty")
	}
	out := make([]llmrt.Message, len(in))
	for i, m := range in {
		content, err := messageContent(m.Content)
		if err != nil {
			return nil, err
		}
		role := m.Role
		if role == "developer" {
			role = "system"
		}
		out[i] = llmrt.Message{Role: role, Content: content, Name: m.Name, ToolCallID: m.ToolCallID}
		if len(m.ToolCalls) > 0 {
			out[i].ToolCalls = templateToolCalls(m.ToolCalls)
		}
	}
	return out, nil
}

// messageContent is a message's content for the template: a string, or nil.
func messageContent(raw json.RawMessage) (any, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return nil, badRequest("messages", "a message's content must be a string or a list of content parts")
	}
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		if p.Type != "text" {
			return nil, badRequest("messages", "content parts of type %q are not supported (text only)", p.Type)
		}
		texts = append(texts, p.Text)
	}
	return strings.Join(texts, "\n"), nil
}

// templateToolCalls gives an assistant message's tool calls with their arguments as
// JSON objects where they parse.
func templateToolCalls(calls []toolCall) json.RawMessage {
	type fn struct {
		Name      string `json:"name"`
		Arguments any    `json:"arguments"`
	}
	type call struct {
		ID       string `json:"id,omitempty"`
		Type     string `json:"type"`
		Function fn     `json:"function"`
	}
	out := make([]call, len(calls))
	for i, c := range calls {
		var args any = c.Function.Arguments
		var obj map[string]any
		if json.Unmarshal([]byte(c.Function.Arguments), &obj) == nil {
			args = obj
		}
		out[i] = call{ID: c.ID, Type: "function", Function: fn{Name: c.Function.Name, Arguments: args}}
	}
	return marshalRaw(out)
}

// answer runs the generation to its end and answers it in one body.
func (j *chatJob) answer(ctx context.Context, w http.ResponseWriter, events <-chan seqEvent, resp chatResponse) {
	choices, usage, err := j.s.collect(ctx, events, j.numChoices)
	if err != nil {
		j.s.failed(w, err)
		return
	}
	resp.Object = "chat.completion"
	resp.Usage = &usage
	resp.Choices = make([]chatChoice, len(choices))
	for i, c := range choices {
		resp.Choices[i] = j.choice(i, &c)
	}
	writeJSON(w, resp)
}

// choice is a finished choice in the non-streamed shape: its content, its reasoning
// (reasoning_content) and its tool calls, forced or found by the library's parser. The
// content is null when it is empty beside tool calls or reasoning.
func (j *chatJob) choice(i int, c *choiceState) chatChoice {
	text := string(c.text)
	out := chatChoice{Index: i, Message: chatMessageOut{Role: "assistant", Content: &text}}
	if len(c.reasoning) > 0 {
		r := string(c.reasoning)
		out.Message.ReasoningContent = &r
	}
	gotCalls := false
	if j.tools.forced() {
		if calls, ok := j.tools.toolCalls(text); ok {
			for k := range calls {
				calls[k].Index = nil // only stream deltas number their calls
			}
			out.Message.Content, out.Message.ToolCalls, gotCalls = nil, calls, true
		}
	} else if len(c.toolCalls) > 0 {
		out.Message.ToolCalls, gotCalls = parsedToolCalls(c.toolCalls), true
	}
	if text == "" && (gotCalls || out.Message.ReasoningContent != nil) {
		out.Message.Content = nil
	}
	out.FinishReason = j.tools.finishReason(c.finish, gotCalls)
	if j.logprobs {
		out.Logprobs = &chatLogprobs{Content: j.s.tokens.chatLogprobsOf(c.logprobs)}
	}
	return out
}

// stream sends the role of every choice, then one delta per event (a forced tool call
// is sent whole when it is complete), a finish chunk per choice, the usage chunk if
// asked, and [DONE].
func (j *chatJob) stream(ctx context.Context, sse *sseWriter, events <-chan seqEvent, head chatResponse) {
	chunk := chatChunk{ID: head.ID, Object: "chat.completion.chunk", Created: head.Created, Model: head.Model}
	if j.includeUsage {
		chunk.Usage = json.RawMessage("null")
	}
	send := func(c chatChunkChoice) error {
		chunk.Choices = []chatChunkChoice{c}
		return sse.send(chunk)
	}
	empty := ""
	for i := 0; i < j.numChoices; i++ {
		if err := send(chatChunkChoice{Index: i, Delta: chatDelta{Role: "assistant", Content: &empty}}); err != nil {
			return
		}
	}
	states := make([]streamChoice, j.numChoices)
	usage, err := j.s.consume(ctx, events, func(ev seqEvent) error {
		if ev.choice >= j.numChoices {
			return nil
		}
		return j.streamEvent(ev, &states[ev.choice], send)
	})
	if err != nil {
		sse.fail(err)
		return
	}
	if j.includeUsage {
		chunk.Choices = []chatChunkChoice{}
		chunk.Usage = &usage
		if sse.send(chunk) != nil {
			return
		}
	}
	sse.done()
}

// streamChoice is what a streamed choice remembers between its events.
type streamChoice struct {
	// held is a forced tool call's text, sent once complete.
	held []byte
	// called: the library's parser found tool calls in this choice.
	called bool
}

// streamEvent sends one event's delta (its content, reasoning_content and tool-call
// pieces, with its logprobs) and, when its sequence ends, the finish chunk.
func (j *chatJob) streamEvent(ev seqEvent, st *streamChoice, send func(chatChunkChoice) error) error {
	forced := j.tools.forced()
	var d chatDelta
	if ev.Reasoning != "" {
		r := ev.Reasoning
		d.ReasoningContent = &r
	}
	if len(ev.ToolCalls) > 0 {
		d.ToolCalls, st.called = toolCallDeltas(ev.ToolCalls), true
	}
	if forced {
		st.held = append(st.held, ev.Text...)
	} else if ev.Text != "" || (d.ReasoningContent == nil && d.ToolCalls == nil && len(ev.Logprobs) > 0) {
		text := ev.Text
		d.Content = &text
	}
	if d.Content != nil || d.ReasoningContent != nil || d.ToolCalls != nil || (j.logprobs && len(ev.Logprobs) > 0) {
		c := chatChunkChoice{Index: ev.choice, Delta: d}
		if j.logprobs {
			c.Logprobs = &chatLogprobs{Content: j.s.tokens.chatLogprobsOf(ev.Logprobs)}
		}
		if err := send(c); err != nil {
			return err
		}
	}
	if ev.FinishReason == llmrt.FinishNone {
		return nil
	}
	gotCalls := st.called
	if forced {
		var err error
		if gotCalls, err = j.sendHeld(ev.choice, string(st.held), send); err != nil {
			return err
		}
	}
	reason := j.tools.finishReason(ev.FinishReason, gotCalls)
	return send(chatChunkChoice{Index: ev.choice, FinishReason: &reason})
}

// sendHeld sends a forced answer once complete: its tool calls, or its text when it is
// not the calls' JSON (cut short).
func (j *chatJob) sendHeld(choice int, text string, send func(chatChunkChoice) error) (bool, error) {
	if calls, ok := j.tools.toolCalls(text); ok {
		return true, send(chatChunkChoice{Index: choice, Delta: chatDelta{ToolCalls: calls}})
	}
	if text == "" {
		return false, nil
	}
	return false, send(chatChunkChoice{Index: choice, Delta: chatDelta{Content: &text}})
}
