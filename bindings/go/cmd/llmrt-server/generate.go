package main

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"llmrt.dev/llmrt"
)

// seqEvent is an engine event with the choice it belongs to: choices are numbered
// prompt by prompt, n per prompt, as OpenAI numbers them.
type seqEvent struct {
	llmrt.Event
	choice int
}

// Why a generation ended early.
var (
	errClientGone = errors.New("the client went away")
	errShutdown   = newAPIError(http.StatusServiceUnavailable, "server_error", "", "the server is shutting down; the request was aborted")
)

// start submits a generation's requests under ctx (cancelling it aborts them all) and
// returns their events, merged. When a submit fails the ones before it are aborted.
func (s *Server) start(ctx context.Context, cancel context.CancelFunc, g *generation) (<-chan seqEvent, *apiError) {
	chans := make([]<-chan llmrt.Event, len(g.requests))
	for i, req := range g.requests {
		ch, err := s.eng.Submit(ctx, req)
		if err != nil {
			cancel()
			s.noteEngineError(err)
			return nil, libraryError(err)
		}
		chans[i] = ch
	}
	return merge(ctx, chans, g.n), nil
}

// merge forwards the events of several requests into one channel, closed when all are.
// Once ctx is done nobody reads it any more: events are then dropped (the binding still
// closes each request's channel, so the forwarders end).
func merge(ctx context.Context, chans []<-chan llmrt.Event, n int) <-chan seqEvent {
	out := make(chan seqEvent)
	var wg sync.WaitGroup
	for p, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range ch {
				select {
				case out <- seqEvent{Event: ev, choice: p*n + ev.Index}:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}

// consume hands every event to each until the generation is over, and returns the
// usage of all its requests. It stops early with errClientGone, errShutdown, each's
// error, or an *apiError when a request failed in the engine.
func (s *Server) consume(ctx context.Context, events <-chan seqEvent, each func(seqEvent) error) (usageInfo, error) {
	var usage usageInfo
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return usage, nil
			}
			if err := s.checkFinal(ctx, ev); err != nil {
				return usage, err
			}
			if err := each(ev); err != nil {
				return usage, err
			}
			if ev.Usage != nil {
				usage.add(ev.Usage.PromptTokens, ev.Usage.CompletionTokens)
			}
		case <-ctx.Done():
			return usage, s.whyDone()
		}
	}
}

// checkFinal turns a failed or aborted sequence into the generation's error.
func (s *Server) checkFinal(ctx context.Context, ev seqEvent) error {
	switch ev.FinishReason {
	case llmrt.FinishError:
		return newAPIError(http.StatusInternalServerError, "server_error", "", "generation failed: %s", ev.ErrorMessage)
	case llmrt.FinishAbort:
		// Aborted by the engine itself (not by this request's context): it stopped.
		if ctx.Err() != nil {
			return s.whyDone()
		}
		return errShutdown
	}
	return nil
}

// whyDone tells a shutdown from a client that went away, once a request's context is done.
func (s *Server) whyDone() error {
	if s.draining.Load() {
		return errShutdown
	}
	return errClientGone
}

// finishReason is OpenAI's name of a finished sequence's reason.
func finishReason(r llmrt.FinishReason) string {
	if r == llmrt.FinishLength {
		return "length"
	}
	return "stop"
}

// choiceState accumulates one choice of a non-streamed answer.
type choiceState struct {
	text      []byte
	reasoning []byte
	toolCalls []llmrt.ToolCall // found by the library's tool_call_parser
	logprobs  []llmrt.Logprob
	finish    llmrt.FinishReason
}

func (c *choiceState) add(ev seqEvent) {
	c.text = append(c.text, ev.Text...)
	c.reasoning = append(c.reasoning, ev.Reasoning...)
	c.toolCalls = llmrt.AppendToolCalls(c.toolCalls, ev.ToolCalls)
	c.logprobs = append(c.logprobs, ev.Logprobs...)
	if ev.FinishReason != llmrt.FinishNone {
		c.finish = ev.FinishReason
	}
}

// collect runs a generation to its end and returns its choices and usage.
func (s *Server) collect(ctx context.Context, events <-chan seqEvent, numChoices int) ([]choiceState, usageInfo, error) {
	choices := make([]choiceState, numChoices)
	usage, err := s.consume(ctx, events, func(ev seqEvent) error {
		if ev.choice < numChoices {
			choices[ev.choice].add(ev)
		}
		return nil
	})
	return choices, usage, err
}
