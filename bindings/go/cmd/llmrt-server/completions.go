package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"llmrt.dev/llmrt"
)

// completionPrompt is one prompt of a completions request.
type completionPrompt struct {
	text  string   // as given, or the decode of ids; the echo
	ids   []uint32 // set for token-id prompts, and for text prompts under echo with logprobs
	given bool     // the prompt was given as text
	// logprobs are the prompt tokens' logprobs under echo with logprobs: nil for the
	// first token, then the engine's prompt logprobs once its first event has come.
	logprobs []*llmrt.Logprob
}

// completionJob is a completions request on its way: the prompts, and per choice the
// state of its answer.
type completionJob struct {
	s            *Server
	prompts      []completionPrompt
	n            int
	echo         bool
	logprobs     bool
	includeUsage bool
	// Per choice: whether its echo was given, and the text offset of its next token.
	started []bool
	offsets []int
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	job, g, err := s.planCompletion(&req)
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
	resp := completionResponse{ID: newID("cmpl-"), Object: "text_completion", Created: time.Now().Unix(), Model: s.cfg.ModelName}
	if req.Stream {
		s.streamCompletion(ctx, newSSE(w), job, events, resp)
		return
	}
	s.answerCompletion(ctx, w, job, events, resp)
}

// planCompletion checks a completions request and turns it into engine requests.
func (s *Server) planCompletion(req *completionRequest) (*completionJob, *generation, *apiError) {
	if err := s.checkModel(req.Model); err != nil {
		return nil, nil, err
	}
	if req.Suffix != nil && *req.Suffix != "" {
		return nil, nil, badRequest("suffix", "suffix is not supported")
	}
	if err := checkMaxTokens("max_tokens", req.MaxTokens); err != nil {
		return nil, nil, err
	}
	includeUsage, err := req.streamUsage()
	if err != nil {
		return nil, nil, err
	}
	prompts, err := s.parsePrompts(req.Prompt, req.Echo && req.Logprobs != nil)
	if err != nil {
		return nil, nil, err
	}
	params, extra, err := req.samplingParams(deref(req.MaxTokens))
	if err != nil {
		return nil, nil, err
	}
	params.Logprobs = req.Logprobs
	if req.Echo && req.Logprobs != nil {
		params.PromptLogprobs = req.Logprobs
	}
	so, err := req.structuredOutputs()
	if err != nil {
		return nil, nil, err
	}
	withStructuredOutputs(extra, so)
	g := &generation{n: params.N}
	for _, p := range prompts {
		lr := llmrt.Request{SamplingParams: params, Extra: extra, Priority: req.Priority, CacheSalt: req.CacheSalt}
		if p.ids != nil {
			lr.PromptTokenIDs = p.ids
		} else {
			lr.Prompt = p.text
		}
		g.requests = append(g.requests, lr)
	}
	numChoices := len(prompts) * params.N
	job := &completionJob{
		s: s, prompts: prompts, n: params.N, echo: req.Echo, logprobs: req.Logprobs != nil, includeUsage: includeUsage,
		started: make([]bool, numChoices), offsets: make([]int, numChoices),
	}
	return job, g, nil
}

// parsePrompts reads "prompt": a string, a list of strings, a list of token ids or a
// list of such lists. withIDs tokenizes text prompts (echo with logprobs lists every
// prompt token, so the ids must be known).
func (s *Server) parsePrompts(raw json.RawMessage, withIDs bool) ([]completionPrompt, *apiError) {
	raw = bytes.TrimSpace(raw)
	var one string
	var texts []string
	var ids []uint32
	var idLists [][]uint32
	var prompts []completionPrompt
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return nil, badRequest("prompt", "prompt is required")
	case json.Unmarshal(raw, &one) == nil:
		prompts = []completionPrompt{{text: one, given: true}}
	case json.Unmarshal(raw, &texts) == nil && len(texts) > 0:
		for _, t := range texts {
			prompts = append(prompts, completionPrompt{text: t, given: true})
		}
	case json.Unmarshal(raw, &ids) == nil && len(ids) > 0:
		prompts = []completionPrompt{{ids: ids}}
	case json.Unmarshal(raw, &idLists) == nil && len(idLists) > 0:
		for _, l := range idLists {
			prompts = append(prompts, completionPrompt{ids: l})
		}
	default:
		return nil, badRequest("prompt", "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids, not empty")
	}
	for i := range prompts {
		if err := s.resolvePrompt(&prompts[i], withIDs); err != nil {
			return nil, err
		}
	}
	return prompts, nil
}

// resolvePrompt fills in the echo text of a token-id prompt, and the ids of a text
// prompt when withIDs.
func (s *Server) resolvePrompt(p *completionPrompt, withIDs bool) *apiError {
	var err error
	switch {
	case !p.given:
		// A token id outside the vocabulary fails here with the library's message.
		p.text, err = s.eng.Detokenize(p.ids, false)
	case withIDs:
		p.ids, err = s.eng.Tokenize(p.text, true)
	}
	if err != nil {
		return libraryError(err)
	}
	if withIDs && len(p.ids) > 0 {
		p.logprobs = []*llmrt.Logprob{nil}
	}
	return nil
}

// piece is one event's part of its choice: its text and logprobs, preceded on the
// choice's first event by the echo (the prompt, with its logprobs).
func (j *completionJob) piece(ev seqEvent) completionChoice {
	c := completionChoice{Index: ev.choice}
	p := &j.prompts[ev.choice/j.n]
	for i := range ev.PromptLogprobs {
		p.logprobs = append(p.logprobs, &ev.PromptLogprobs[i])
	}
	if j.logprobs {
		c.Logprobs = &completionLogprobs{}
	}
	if j.echo && !j.started[ev.choice] {
		c.Text = p.text
		if c.Logprobs != nil && len(p.logprobs) == len(p.ids) {
			j.offsets[ev.choice] = j.s.tokens.appendCompletion(c.Logprobs, p.ids, p.logprobs, 0)
		}
	}
	j.started[ev.choice] = true
	c.Text += ev.Text
	if c.Logprobs != nil {
		lps := make([]*llmrt.Logprob, min(len(ev.Logprobs), len(ev.TokenIDs)))
		for i := range lps {
			lps[i] = &ev.Logprobs[i]
		}
		j.offsets[ev.choice] = j.s.tokens.appendCompletion(c.Logprobs, ev.TokenIDs[:len(lps)], lps, j.offsets[ev.choice])
	}
	if ev.FinishReason != llmrt.FinishNone {
		reason := finishReason(ev.FinishReason)
		c.FinishReason = &reason
	}
	return c
}

// answerCompletion runs the generation to its end and answers it in one body.
func (s *Server) answerCompletion(ctx context.Context, w http.ResponseWriter, job *completionJob, events <-chan seqEvent, resp completionResponse) {
	resp.Choices = make([]completionChoice, len(job.started))
	for i := range resp.Choices {
		resp.Choices[i].Index = i
	}
	usage, err := s.consume(ctx, events, func(ev seqEvent) error {
		mergePiece(&resp.Choices[ev.choice], job.piece(ev))
		return nil
	})
	if err != nil {
		s.failed(w, err)
		return
	}
	resp.Usage = &usage
	writeJSON(w, resp)
}

// mergePiece appends an event's piece to its choice.
func mergePiece(c *completionChoice, p completionChoice) {
	c.Text += p.Text
	if p.Logprobs != nil {
		if c.Logprobs == nil {
			c.Logprobs = &completionLogprobs{}
		}
		c.Logprobs.Tokens = append(c.Logprobs.Tokens, p.Logprobs.Tokens...)
		c.Logprobs.TokenLogprobs = append(c.Logprobs.TokenLogprobs, p.Logprobs.TokenLogprobs...)
		c.Logprobs.TopLogprobs = append(c.Logprobs.TopLogprobs, p.Logprobs.TopLogprobs...)
		c.Logprobs.TextOffset = append(c.Logprobs.TextOffset, p.Logprobs.TextOffset...)
	}
	if p.FinishReason != nil {
		c.FinishReason = p.FinishReason
	}
}

// streamCompletion sends one chunk per event, then the usage chunk if asked, then [DONE].
func (s *Server) streamCompletion(ctx context.Context, sse *sseWriter, job *completionJob, events <-chan seqEvent, resp completionResponse) {
	if job.includeUsage {
		resp.Usage = json.RawMessage("null")
	}
	usage, err := s.consume(ctx, events, func(ev seqEvent) error {
		c := job.piece(ev)
		if c.Text == "" && c.FinishReason == nil && (c.Logprobs == nil || len(c.Logprobs.Tokens) == 0) {
			return nil // nothing to tell (e.g. prompt logprobs alone)
		}
		resp.Choices = []completionChoice{c}
		return sse.send(resp)
	})
	if err != nil {
		sse.fail(err)
		return
	}
	if job.includeUsage {
		resp.Choices = []completionChoice{}
		resp.Usage = &usage
		if sse.send(resp) != nil {
			return
		}
	}
	sse.done()
}

// failed answers a generation that ended early before anything was sent.
func (s *Server) failed(w http.ResponseWriter, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae)
	}
	// Otherwise errClientGone: nobody to answer.
}
