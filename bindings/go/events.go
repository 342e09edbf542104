package llmrt

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
)

// EventKind tells a token event from a request's final event.
type EventKind int32

const (
	// EventToken carries new tokens (and their text) of a running request.
	EventToken EventKind = 0
	// EventFinal is a request's last event: it may carry tokens too, and has a finish
	// reason and usage. Exactly one per request.
	EventFinal EventKind = 1
)

func (k EventKind) String() string {
	switch k {
	case EventToken:
		return "token"
	case EventFinal:
		return "final"
	}
	return fmt.Sprintf("EventKind(%d)", int32(k))
}

// FinishReason says why a request finished (the C enum llmrt_reason).
type FinishReason int32

const (
	// FinishNone: not finished (a token event).
	FinishNone FinishReason = 0
	// FinishStop: an end-of-sequence token, a stop token or a stop string.
	FinishStop FinishReason = 1
	// FinishLength: max_tokens or the model's context length reached.
	FinishLength FinishReason = 2
	// FinishAbort: aborted (context cancelled, Engine.Close).
	FinishAbort FinishReason = 3
	// FinishError: the request failed; Event.ErrorMessage says why.
	FinishError FinishReason = 4
)

// String gives the OpenAI-style name: "", "stop", "length", "abort", "error".
func (r FinishReason) String() string {
	switch r {
	case FinishNone:
		return ""
	case FinishStop:
		return "stop"
	case FinishLength:
		return "length"
	case FinishAbort:
		return "abort"
	case FinishError:
		return "error"
	}
	return fmt.Sprintf("FinishReason(%d)", int32(r))
}

// Usage is the token counts of a finished request.
type Usage struct {
	PromptTokens       uint64
	CompletionTokens   uint64
	CachedPromptTokens uint64
}

// Logprob is the log-probability of one token (generated, or of the prompt), with the
// top alternatives when the request asked for them (vLLM's logprobs: k).
type Logprob struct {
	TokenID uint32
	// Logprob is of the distribution the request's logprobs_mode names (by default the
	// model's raw log-probabilities). It may be -Inf.
	Logprob float32
	Rank    uint32 // 1 is the most likely
	// Top are the most likely tokens at this position, most likely first.
	Top []TopLogprob
}

// TopLogprob is one of the most likely alternatives at a position.
type TopLogprob struct {
	TokenID uint32
	Logprob float32
	Rank    uint32
}

// ToolCallChunk is one piece of a tool call the library's tool_call_parser found in a
// sequence's output (Event.ToolCalls), in the shape of OpenAI's streamed
// delta.tool_calls entries. A call's first piece carries its ID and Name; later pieces
// have them empty and carry more Arguments: a call's arguments are the concatenation of
// its pieces' Arguments.
type ToolCallChunk struct {
	// Index numbers the sequence's calls from 0.
	Index int `json:"index"`
	// ID is the call's id ("call_..."); "" except in the call's first piece.
	ID string `json:"id"`
	// Name is the function's name; "" except in the call's first piece.
	Name string `json:"name"`
	// Arguments is JSON text to append to the call's arguments.
	Arguments string `json:"arguments"`
}

// ToolCall is a whole tool call of a sequence (Sequence.ToolCalls): its pieces joined.
type ToolCall struct {
	Index int
	ID    string
	Name  string
	// Arguments is the call's arguments, JSON text (an object).
	Arguments string
}

// decodeToolCalls reads llmrt_event_tool_calls_json's array (nulls become ""). The
// library always gives valid JSON; should it not, the pieces are dropped.
func decodeToolCalls(s string) []ToolCallChunk {
	var raw []struct {
		Index     int     `json:"index"`
		ID        *string `json:"id"`
		Name      *string `json:"name"`
		Arguments string  `json:"arguments"`
	}
	if json.Unmarshal([]byte(s), &raw) != nil || len(raw) == 0 {
		return nil
	}
	out := make([]ToolCallChunk, len(raw))
	for i, r := range raw {
		out[i] = ToolCallChunk{Index: r.Index, Arguments: r.Arguments}
		if r.ID != nil {
			out[i].ID = *r.ID
		}
		if r.Name != nil {
			out[i].Name = *r.Name
		}
	}
	return out
}

// Event is one event of a request. Its data is owned by Go (copied out of the C event
// batch); it stays valid forever.
//
// A request with one sequence gets token events and then its final event, which carries
// the finish reason. With n > 1 (or best_of, beam search) every event belongs to the
// sequence Index; each sequence ends with an event carrying its finish reason (a token
// event, or the final event for the sequence that ends the request).
type Event struct {
	RequestID uint64
	Kind      EventKind
	// Index is the sequence of the request this event belongs to (0..n).
	Index int
	// TokenIDs are the tokens this event adds to the sequence's output.
	TokenIDs []uint32
	// Text is the text of TokenIDs: whole UTF-8 characters; the texts of a sequence's
	// events concatenate to the decode of all its tokens. Empty when no text was asked.
	// With a ReasoningParser it is the content only (the reasoning is in Reasoning);
	// with a ToolCallParser, only the text outside tool calls (the calls are in
	// ToolCalls). A parser may hold back text that could still become a tag, so an
	// event's Text need not be its tokens' text then.
	Text string
	// Reasoning is the reasoning text of this event (Request.ReasoningParser); "" when
	// none.
	Reasoning string
	// ToolCalls are the tool-call pieces this event adds (Request.ToolCallParser); nil
	// when none.
	ToolCalls []ToolCallChunk
	// FinishReason is set on the event that ends the sequence (FinishNone before).
	FinishReason FinishReason
	// StopTokenID is the token that ended the sequence (FinishStop by an EOS or stop
	// token); nil otherwise.
	StopTokenID *uint32
	// StopString is the stop string that ended the sequence (FinishStop); "" otherwise.
	StopString string
	// Usage is set on the final event only: the whole request's token counts.
	Usage *Usage
	// ErrorMessage is why the request failed (FinishError).
	ErrorMessage string
	// Logprobs has one entry per token of TokenIDs when the request asked for logprobs.
	Logprobs []Logprob
	// CumulativeLogprob is the sum of the sequence's token logprobs so far, when they are
	// computed (logprobs, best_of > n, beam search); nil otherwise.
	CumulativeLogprob *float64
	// PromptLogprobs is set on the request's first event when it asked for
	// prompt_logprobs: entry i is about prompt token i + 1 (the first has no logprob).
	PromptLogprobs []Logprob
}

// Final reports whether this is the request's final event.
func (e Event) Final() bool { return e.Kind == EventFinal }

// Err returns an error wrapping ErrRequestFailed for a final event with FinishError,
// else nil.
func (e Event) Err() error {
	if e.FinishReason != FinishError {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrRequestFailed, e.ErrorMessage)
}

// Sequence is one generated sequence of a request (Result.Sequences).
type Sequence struct {
	Index    int
	TokenIDs []uint32
	// Text is the sequence's text (its content, with an output parser).
	Text string
	// Reasoning is the sequence's reasoning text (Request.ReasoningParser).
	Reasoning string
	// ToolCalls are the sequence's tool calls by index (Request.ToolCallParser).
	ToolCalls         []ToolCall
	FinishReason      FinishReason
	StopTokenID       *uint32
	StopString        string
	Logprobs          []Logprob
	CumulativeLogprob *float64
}

// Result is a whole request's output (Engine.Generate, Collect). Its TokenIDs, Text,
// Reasoning, ToolCalls, FinishReason, StopTokenID, StopString and Logprobs are those of
// sequence 0, the only one unless the request asked for n > 1; Sequences has every
// sequence by index.
type Result struct {
	RequestID    uint64
	TokenIDs     []uint32
	Text         string
	Reasoning    string
	ToolCalls    []ToolCall
	FinishReason FinishReason
	StopTokenID  *uint32
	StopString   string
	Usage        Usage
	ErrorMessage string
	Logprobs     []Logprob
	// Sequences are the request's sequences, Sequences[i].Index == i.
	Sequences []Sequence
	// PromptLogprobs: see Event.PromptLogprobs.
	PromptLogprobs []Logprob
	// Events is how many events the request had.
	Events int
}

// Collect reads a request's channel to its end and gathers its events into a Result.
// It returns an error wrapping ErrRequestFailed when the request failed.
func Collect(events <-chan Event) (*Result, error) {
	res := &Result{}
	var texts, reasoning []*strings.Builder
	failed := false
	for ev := range events {
		res.Events++
		res.RequestID = ev.RequestID
		res.PromptLogprobs = append(res.PromptLogprobs, ev.PromptLogprobs...)
		for len(res.Sequences) <= ev.Index {
			res.Sequences = append(res.Sequences, Sequence{Index: len(res.Sequences)})
			texts = append(texts, &strings.Builder{})
			reasoning = append(reasoning, &strings.Builder{})
		}
		seq := &res.Sequences[ev.Index]
		seq.TokenIDs = append(seq.TokenIDs, ev.TokenIDs...)
		texts[ev.Index].WriteString(ev.Text)
		reasoning[ev.Index].WriteString(ev.Reasoning)
		seq.ToolCalls = AppendToolCalls(seq.ToolCalls, ev.ToolCalls)
		seq.Logprobs = append(seq.Logprobs, ev.Logprobs...)
		if ev.CumulativeLogprob != nil {
			seq.CumulativeLogprob = ev.CumulativeLogprob
		}
		if ev.FinishReason != FinishNone {
			seq.FinishReason, seq.StopTokenID, seq.StopString = ev.FinishReason, ev.StopTokenID, ev.StopString
		}
		if ev.Final() {
			if ev.Usage != nil {
				res.Usage = *ev.Usage
			}
			res.ErrorMessage = ev.ErrorMessage
			failed = ev.FinishReason == FinishError
		}
	}
	for i := range res.Sequences {
		res.Sequences[i].Text = texts[i].String()
		res.Sequences[i].Reasoning = reasoning[i].String()
	}
	if len(res.Sequences) > 0 {
		s := res.Sequences[0]
		res.TokenIDs, res.Text, res.Logprobs = s.TokenIDs, s.Text, s.Logprobs
		res.Reasoning, res.ToolCalls = s.Reasoning, s.ToolCalls
		res.FinishReason, res.StopTokenID, res.StopString = s.FinishReason, s.StopTokenID, s.StopString
	}
	if failed {
		res.FinishReason = FinishError
		return res, fmt.Errorf("%w: %s", ErrRequestFailed, res.ErrorMessage)
	}
	return res, nil
}

// AppendToolCalls adds a sequence's streamed pieces to its calls so far: a piece with
// a new index starts a call, the others extend its call's arguments (and fill in an id or
// name not seen yet). Calls stay ordered by index.
func AppendToolCalls(calls []ToolCall, pieces []ToolCallChunk) []ToolCall {
	for _, p := range pieces {
		k := len(calls) - 1
		for k >= 0 && calls[k].Index != p.Index {
			k--
		}
		if k < 0 {
			calls = append(calls, ToolCall{Index: p.Index})
			k = len(calls) - 1
			for ; k > 0 && calls[k-1].Index > p.Index; k-- {
				calls[k], calls[k-1] = calls[k-1], calls[k]
			}
		}
		c := &calls[k]
		if c.ID == "" {
			c.ID = p.ID
		}
		if c.Name == "" {
			c.Name = p.Name
		}
		c.Arguments += p.Arguments
	}
	return calls
}

// streamBuffer is the capacity of a request's channel. It must be at least 1: a
// forwarder in dropping mode makes room for the final event by taking stale events out
// of its own channel.
const streamBuffer = 16

// stream is one request's route from the poller to its channel. The poller appends to
// queue (it never blocks on a slow reader); the request's forwarder goroutine moves the
// events to out, in order, and closes out after the final event.
type stream struct {
	mu     sync.Mutex
	queue  []Event
	notify chan struct{} // capacity 1: "queue is not empty"

	out     chan Event
	ctxDone <-chan struct{}
	closed  <-chan struct{} // the engine's: closed when Close starts
	// stopAbort unregisters the context's abort hook (set before the forwarder starts).
	stopAbort func() bool
}

func newStream(ctx context.Context, closed <-chan struct{}) *stream {
	return &stream{
		notify:  make(chan struct{}, 1),
		out:     make(chan Event, streamBuffer),
		ctxDone: ctx.Done(),
		closed:  closed,
	}
}

// push queues events for the forwarder. Called by the poller; never blocks.
func (s *stream) push(ev Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *stream) take() []Event {
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	return q
}

// forward runs in the request's own goroutine until the final event is delivered.
//
// Normally every event is delivered, blocking until the reader takes it. Once the
// request's context is done or the engine is closing, the forwarder switches to
// dropping: token events not yet received are dropped (the reader asked to stop), and
// the final event is put in the channel without waiting for a reader (making room by
// discarding stale token events from the channel), so an abandoned channel never leaks
// the goroutine. Either way the final event is the channel's last, then it is closed.
func (s *stream) forward() {
	defer close(s.out)
	defer func() {
		if s.stopAbort != nil {
			s.stopAbort()
		}
	}()
	dropping := false
	for {
		if dropping {
			<-s.notify // the final event is on its way (abort or close)
		} else {
			select {
			case <-s.notify:
			case <-s.ctxDone:
				dropping = true
				continue
			case <-s.closed:
				dropping = true
				continue
			}
		}
		for _, ev := range s.take() {
			if ev.Kind == EventFinal {
				s.deliverFinal(ev, dropping)
				return
			}
			if dropping {
				continue
			}
			select {
			case s.out <- ev:
			case <-s.ctxDone:
				dropping = true
			case <-s.closed:
				dropping = true
			}
		}
	}
}

func (s *stream) deliverFinal(ev Event, dropping bool) {
	if !dropping {
		select {
		case s.out <- ev:
			return
		case <-s.ctxDone:
		case <-s.closed:
		}
	}
	// This goroutine is the only sender: once it has taken stale events out, the send
	// cannot block.
	for {
		select {
		case s.out <- ev:
			return
		default:
		}
		select {
		case <-s.out:
		default:
		}
	}
}
