// Package llmrt is the Go binding of llmrt, an LLM inference engine with a C ABI
// (include/llmrt.h).
//
// An Engine loads a model and runs requests. Submit returns a channel of Events per
// request: any number of token events, then exactly one final event (finish reason,
// usage), after which the channel is closed. One goroutine per engine polls the library
// and routes events to the requests' channels; cancelling a request's context aborts it.
// Every method may be called from any number of goroutines at once.
//
//	eng, err := llmrt.New(llmrt.Config{Model: "path/to/model"})
//	if err != nil { ... }
//	defer eng.Close()
//	events, err := eng.Submit(ctx, llmrt.Request{Prompt: "Hello", SamplingParams: llmrt.SamplingParams{MaxTokens: 16}})
//	if err != nil { ... }
//	for ev := range events {
//		fmt.Print(ev.Text)
//	}
//
// Errors from the library are *Error values carrying the llmrt status code; compare them
// with errors.Is against ErrInvalidRequest, ErrInvalidJSON, ... or read StatusOf(err).
//
// Building: cgo needs the header (found in ../../include) and the shared library, e.g.
// CGO_LDFLAGS="-L/opt/llmrt/lib -Wl,-rpath,/opt/llmrt/lib" (see README.md).
package llmrt

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -lllmrt
#include <stdlib.h>
#include <stdint.h>
#include "llmrt.h"

// Everything Go needs of one event, read in one cgo call per batch.
typedef struct {
	uint64_t request_id;
	uint64_t user_tag;
	const uint32_t *tokens;
	size_t num_tokens;
	const char *text;
	size_t text_len;
	const char *error;
	const char *stop_string;
	const char *reasoning;
	const char *tool_calls;
	size_t num_logprobs;
	size_t num_prompt_logprobs;
	uint64_t usage[3];
	double cumulative_logprob;
	uint32_t stop_token;
	uint32_t index;
	int32_t kind;
	int32_t reason;
	uint8_t has_usage;
	uint8_t has_stop;
	uint8_t has_cumulative_logprob;
} llmrt_go_event;

static void llmrt_go_read_events(const llmrt_events *ev, llmrt_go_event *out, size_t n) {
	for (size_t i = 0; i < n; i++) {
		llmrt_go_event *o = &out[i];
		o->request_id = llmrt_event_request_id(ev, i);
		o->user_tag = llmrt_event_user_tag(ev, i);
		o->kind = llmrt_event_kind(ev, i);
		o->tokens = llmrt_event_token_ids(ev, i, &o->num_tokens);
		o->text = llmrt_event_text(ev, i, &o->text_len);
		o->reason = llmrt_event_finish_reason(ev, i);
		o->has_stop = llmrt_event_stop_token_id(ev, i, &o->stop_token);
		o->has_usage = llmrt_event_usage(ev, i, &o->usage[0], &o->usage[1], &o->usage[2]);
		o->error = llmrt_event_error_message(ev, i);
		o->num_logprobs = llmrt_event_logprobs_count(ev, i);
		o->num_prompt_logprobs = llmrt_event_prompt_logprobs_count(ev, i);
		o->index = llmrt_event_index(ev, i);
		o->stop_string = llmrt_event_stop_string(ev, i);
		o->reasoning = llmrt_event_reasoning_text(ev, i);
		o->tool_calls = llmrt_event_tool_calls_json(ev, i);
		o->has_cumulative_logprob = llmrt_event_cumulative_logprob(ev, i, &o->cumulative_logprob);
	}
}

// The number of alternatives at entry pos of event i (generated or prompt logprobs).
static size_t llmrt_go_top_count(const llmrt_events *ev, size_t i, size_t pos, bool prompt) {
	return prompt ? llmrt_event_prompt_top_logprobs_count(ev, i, pos)
	              : llmrt_event_top_logprobs_count(ev, i, pos);
}

// Reads entry pos of event i into the arrays: slot 0 is the token itself, then up to
// cap - 1 alternatives, in one cgo call. Returns the number of slots written (0: no entry).
static size_t llmrt_go_read_logprob(const llmrt_events *ev, size_t i, size_t pos, bool prompt,
                                    uint32_t *ids, float *lps, uint32_t *ranks, size_t cap) {
	bool ok = prompt ? llmrt_event_prompt_logprob(ev, i, pos, &ids[0], &lps[0], &ranks[0])
	                 : llmrt_event_logprob(ev, i, pos, &ids[0], &lps[0], &ranks[0]);
	if (!ok) {
		return 0;
	}
	size_t n = 1;
	for (size_t k = 0; n < cap; k++, n++) {
		ok = prompt ? llmrt_event_prompt_top_logprob(ev, i, pos, k, &ids[n], &lps[n], &ranks[n])
		            : llmrt_event_top_logprob(ev, i, pos, k, &ids[n], &lps[n], &ranks[n]);
		if (!ok) {
			break;
		}
	}
	return n;
}

// The load-progress callback: user_data is a cgo.Handle (an integer, not a Go pointer).
extern _Bool llmrtGoProgress(uintptr_t handle, float progress, char *stage);

static bool llmrt_go_progress(void *user_data, float progress, const char *stage) {
	return llmrtGoProgress((uintptr_t)user_data, progress, (char *)stage);
}

static llmrt_error *llmrt_go_engine_new(const char *config, uintptr_t handle,
                                        llmrt_engine **engine) {
	return llmrt_engine_new(config, handle ? llmrt_go_progress : NULL, (void *)handle,
	                        engine);
}
*/
import "C"

import (
	"context"
	"encoding/json"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// ABIVersion is the C ABI version this binding was compiled against; New refuses a
// library whose llmrt_abi_version differs.
const ABIVersion = uint32(C.LLMRT_ABI_VERSION)

// Submit flags of the fast path (llmrt_engine_submit_tokens).
const (
	flagIgnoreEOS         = uint32(C.LLMRT_SUBMIT_IGNORE_EOS)
	flagNoText            = uint32(C.LLMRT_SUBMIT_NO_TEXT)
	flagKeepSpecialTokens = uint32(C.LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS)
)

const (
	pollBatch     = 256  // events taken per llmrt_engine_poll
	pollTimeoutMS = 1000 // the poller's wait; llmrt_engine_stop wakes it at once
)

// Version is the loaded library's version, e.g. "0.1.0".
func Version() string { return C.GoString(C.llmrt_version()) }

// LibraryABIVersion is the loaded library's ABI version (llmrt_abi_version).
func LibraryABIVersion() uint32 { return uint32(C.llmrt_abi_version()) }

// CapabilitiesJSON is what this build of the library can do, as JSON.
func CapabilitiesJSON() string { return C.GoString(C.llmrt_capabilities()) }

// CapabilitiesInfo is the parsed form of CapabilitiesJSON (Raw keeps keys added later).
type CapabilitiesInfo struct {
	Version       string          `json:"version"`
	ABIVersion    uint32          `json:"abi_version"`
	Architectures []string        `json:"architectures"`
	WeightFormats []string        `json:"weight_formats"`
	WeightTypes   []string        `json:"weight_types"`
	Backends      []string        `json:"backends"`
	CPUFeatures   []string        `json:"cpu_features"`
	Features      []string        `json:"features"`
	Raw           json.RawMessage `json:"-"`
}

// Capabilities parses CapabilitiesJSON.
func Capabilities() (*CapabilitiesInfo, error) {
	raw := CapabilitiesJSON()
	var c CapabilitiesInfo
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return nil, err
	}
	c.Raw = json.RawMessage(raw)
	return &c, nil
}

// ModelInfo is facts about an engine's model and limits (Engine.ModelInfo).
type ModelInfo struct {
	Architecture    string          `json:"architecture"`
	VocabSize       int             `json:"vocab_size"`
	HiddenSize      int             `json:"hidden_size"`
	NumHiddenLayers int             `json:"num_hidden_layers"`
	MaxModelLen     int             `json:"max_model_len"`
	BlockSize       int             `json:"block_size"`
	NumKVBlocks     int             `json:"num_kv_blocks"`
	EOSTokenIDs     []uint32        `json:"eos_token_ids"`
	BOSToken        *string         `json:"bos_token"`
	EOSToken        *string         `json:"eos_token"`
	HasChatTemplate bool            `json:"has_chat_template"`
	Raw             json.RawMessage `json:"-"`
}

// Engine is a loaded model with its scheduler and threads, and the goroutine that polls
// its events. Create it with New or NewJSON and release it with Close. All methods are
// safe for concurrent use.
type Engine struct {
	// mu guards ptr: C calls hold it for reading; Close frees the engine holding it for
	// writing, after the poller has ended.
	mu      sync.RWMutex
	ptr     *C.llmrt_engine
	closing atomic.Bool

	closeOnce  sync.Once
	closed     chan struct{} // closed when Close starts
	pollerDone chan struct{}

	nextTag   atomic.Uint64
	streamsMu sync.Mutex
	streams   map[uint64]*stream // by user tag
	// dispatchErr is set when the poller has ended: no stream can be added any more.
	dispatchErr error
}

// Option configures New.
type Option func(*options)

type options struct {
	progress func(progress float32, stage string) bool
}

// WithProgress sets a load-progress callback, called on the goroutine running New with
// progress from 0 to 1 and a short description of the stage. Returning false cancels the
// load: New then fails with ErrCancelled.
func WithProgress(fn func(progress float32, stage string) bool) Option {
	return func(o *options) { o.progress = fn }
}

// New loads the model of cfg and starts an engine on it. It blocks while the model loads.
func New(cfg Config, opts ...Option) (*Engine, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, errorf(StatusInvalidConfig, "%v", err)
	}
	return NewJSON(b, opts...)
}

// NewJSON is New with the configuration given as JSON (llmrt_engine_new's config_json).
func NewJSON(configJSON []byte, opts ...Option) (*Engine, error) {
	if v := LibraryABIVersion(); v != ABIVersion {
		return nil, errorf(StatusUnsupported,
			"the llmrt library has ABI version %d, this binding was built for %d", v, ABIVersion)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var handle cgo.Handle
	var progress *progressState
	if o.progress != nil {
		progress = &progressState{fn: o.progress}
		handle = cgo.NewHandle(progress)
		defer handle.Delete()
	}
	cfg := cBytes(configJSON)
	var ptr *C.llmrt_engine
	cerr := C.llmrt_go_engine_new((*C.char)(unsafe.Pointer(&cfg[0])), C.uintptr_t(handle), &ptr)
	if progress != nil && progress.panicked != nil {
		takeError(cerr)
		if ptr != nil {
			C.llmrt_engine_free(ptr)
		}
		panic(progress.panicked)
	}
	if err := takeError(cerr); err != nil {
		return nil, err
	}
	e := &Engine{
		ptr:        ptr,
		closed:     make(chan struct{}),
		pollerDone: make(chan struct{}),
		streams:    make(map[uint64]*stream),
	}
	go e.poll()
	return e, nil
}

// Close aborts every running request (each still gets its final event, FinishAbort, and
// its channel is closed), stops the poller, and frees the engine. It is idempotent and
// safe to call concurrently with any method; afterwards every method returns ErrClosed.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.closing.Store(true)
		close(e.closed)
		// Stop: every request gets its final event, and poll returns
		// LLMRT_ERROR_ENGINE_STOPPED once they are delivered, which ends the poller.
		e.mu.RLock()
		takeError(C.llmrt_engine_stop(e.ptr)) // only INTERNAL can fail; the poller ends anyway
		e.mu.RUnlock()
		<-e.pollerDone
		e.mu.Lock()
		C.llmrt_engine_free(e.ptr)
		e.ptr = nil
		e.mu.Unlock()
	})
	return nil
}

// acquire takes the engine for one C call; release with e.mu.RUnlock.
func (e *Engine) acquire() error {
	if e.closing.Load() {
		return ErrClosed
	}
	e.mu.RLock()
	if e.ptr == nil {
		e.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// callErr converts the error of a C call; a stop caused by Close reads as ErrClosed.
func (e *Engine) callErr(cerr *C.llmrt_error) error {
	err := takeError(cerr)
	if err != nil && e.closing.Load() && StatusOf(err) == StatusEngineStopped {
		return ErrClosed
	}
	return err
}

// Submit submits a request (marshalled to the C API's request JSON) and returns its
// channel of events: token events, then exactly one final event, then the channel is
// closed. Read the channel to its end, or cancel ctx: cancelling aborts the request
// (its final event, usually FinishAbort, is still delivered and the channel closed;
// token events not yet received may be dropped, and nobody needs to read the channel
// for its resources to be released).
//
// Errors: ErrInvalidRequest (unknown field, wrong type, value out of range, token id out
// of the vocabulary, ...), ErrInvalidJSON, ErrTemplate, ErrTokenizer, ErrClosed,
// ErrInternal, or ctx.Err() when ctx is already done.
func (e *Engine) Submit(ctx context.Context, req Request) (<-chan Event, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, errorf(StatusInvalidRequest, "%v", err)
	}
	return e.SubmitJSON(ctx, b)
}

// SubmitJSON is Submit with the request given as JSON (llmrt_engine_submit's
// request_json), e.g. to pass fields through unchanged.
func (e *Engine) SubmitJSON(ctx context.Context, requestJSON []byte) (<-chan Event, error) {
	buf := cBytes(requestJSON)
	return e.submit(ctx, func(ptr *C.llmrt_engine, tag uint64, id *C.uint64_t) *C.llmrt_error {
		return C.llmrt_engine_submit(ptr, (*C.char)(unsafe.Pointer(&buf[0])), C.uint64_t(tag), id)
	})
}

// SubmitTokens is the JSON-free fast path (llmrt_engine_submit_tokens): a prompt of
// token ids and the few sampling values of TokenParams. Events and cancellation are as
// for Submit.
func (e *Engine) SubmitTokens(ctx context.Context, promptTokenIDs []uint32, p TokenParams) (<-chan Event, error) {
	var flags uint32
	if p.IgnoreEOS {
		flags |= flagIgnoreEOS
	}
	if p.NoText {
		flags |= flagNoText
	}
	if p.KeepSpecialTokens {
		flags |= flagKeepSpecialTokens
	}
	maxTokens := p.MaxTokens
	if maxTokens == 0 {
		maxTokens = 16
	}
	topP := p.TopP
	if topP == 0 {
		topP = 1
	}
	seed := int64(-1)
	if p.Seed != nil {
		seed = *p.Seed
	}
	var ids *C.uint32_t
	if len(promptTokenIDs) > 0 {
		ids = (*C.uint32_t)(unsafe.Pointer(&promptTokenIDs[0]))
	}
	return e.submit(ctx, func(ptr *C.llmrt_engine, tag uint64, id *C.uint64_t) *C.llmrt_error {
		return C.llmrt_engine_submit_tokens(ptr, ids, C.size_t(len(promptTokenIDs)),
			C.int32_t(maxTokens), C.float(p.Temperature), C.float(topP), C.int32_t(p.TopK),
			C.int64_t(seed), C.uint32_t(flags), C.uint64_t(tag), id)
	})
}

// Generate submits a request and waits for its whole output. When ctx is cancelled the
// request is aborted and Generate returns what was generated with ctx.Err(); a failed
// request gives an error wrapping ErrRequestFailed.
func (e *Engine) Generate(ctx context.Context, req Request) (*Result, error) {
	ch, err := e.Submit(ctx, req)
	if err != nil {
		return nil, err
	}
	res, err := Collect(ch)
	if err == nil && res.FinishReason == FinishAbort && ctx.Err() != nil {
		err = ctx.Err()
	}
	return res, err
}

func (e *Engine) submit(ctx context.Context, call func(*C.llmrt_engine, uint64, *C.uint64_t) *C.llmrt_error) (<-chan Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if e.closing.Load() {
		return nil, ErrClosed
	}
	s := newStream(ctx, e.closed)
	// The stream is registered under its tag before the C call, so that events polled
	// before the call returns find it.
	tag := e.nextTag.Add(1)
	e.streamsMu.Lock()
	if e.dispatchErr != nil {
		err := e.dispatchErr
		e.streamsMu.Unlock()
		return nil, err
	}
	e.streams[tag] = s
	e.streamsMu.Unlock()

	var id C.uint64_t
	err := e.acquire()
	if err == nil {
		err = e.callErr(call(e.ptr, tag, &id))
		e.mu.RUnlock()
	}
	if err != nil {
		e.streamsMu.Lock()
		delete(e.streams, tag)
		e.streamsMu.Unlock()
		return nil, err
	}
	requestID := uint64(id)
	s.stopAbort = context.AfterFunc(ctx, func() { e.Abort(requestID) })
	go s.forward()
	return s.out, nil
}

// Abort aborts a request by id (Event.RequestID). Its final event (FinishAbort) arrives
// on its channel unless it had already finished; an unknown or finished id is not an
// error. Cancelling the context given to Submit does the same.
func (e *Engine) Abort(requestID uint64) error {
	if err := e.acquire(); err != nil {
		return err
	}
	defer e.mu.RUnlock()
	return e.callErr(C.llmrt_engine_abort(e.ptr, C.uint64_t(requestID)))
}

// poll is the engine's polling goroutine: it takes event batches from the library,
// copies their data into Go memory, frees each batch and routes the events by user tag.
func (e *Engine) poll() {
	defer close(e.pollerDone)
	var buf []C.llmrt_go_event
	var endErr error = ErrClosed
	for {
		var evs *C.llmrt_events
		err := takeError(C.llmrt_engine_poll(e.ptr, pollBatch, pollTimeoutMS, &evs))
		if err != nil {
			if StatusOf(err) != StatusEngineStopped {
				endErr = err
			}
			break
		}
		n := int(C.llmrt_events_count(evs))
		if n == 0 {
			C.llmrt_events_free(evs)
			if e.closing.Load() && e.noStreams() {
				break
			}
			continue
		}
		if cap(buf) < n {
			buf = make([]C.llmrt_go_event, n)
		}
		buf = buf[:n]
		C.llmrt_go_read_events(evs, &buf[0], C.size_t(n))
		events := make([]Event, n)
		tags := make([]uint64, n)
		for i := range buf {
			events[i], tags[i] = copyEvent(evs, i, &buf[i])
		}
		C.llmrt_events_free(evs)
		e.dispatch(events, tags)
	}
	// The poller is over: no stream will get events from the library any more. Streams
	// still registered (a submit racing with Close, or a broken engine) get a final event.
	e.streamsMu.Lock()
	e.dispatchErr = endErr
	left := e.streams
	e.streams = map[uint64]*stream{}
	e.streamsMu.Unlock()
	for _, s := range left {
		ev := Event{Kind: EventFinal, FinishReason: FinishAbort}
		if endErr != ErrClosed {
			ev.FinishReason = FinishError
			ev.ErrorMessage = endErr.Error()
		}
		s.push(ev)
	}
}

// noStreams reports whether no request waits for events. With Close under way, an empty
// batch and no stream let the poller end without waiting for LLMRT_ERROR_ENGINE_STOPPED
// (a safety net should llmrt_engine_stop have failed).
func (e *Engine) noStreams() bool {
	e.streamsMu.Lock()
	defer e.streamsMu.Unlock()
	return len(e.streams) == 0
}

func (e *Engine) dispatch(events []Event, tags []uint64) {
	e.streamsMu.Lock()
	for i := range events {
		s := e.streams[tags[i]]
		if s == nil {
			continue // not ours any more (cannot happen: one final event per request)
		}
		if events[i].Kind == EventFinal {
			delete(e.streams, tags[i])
		}
		s.push(events[i])
	}
	e.streamsMu.Unlock()
}

// copyEvent copies one event out of the C batch into Go memory.
func copyEvent(evs *C.llmrt_events, i int, ce *C.llmrt_go_event) (Event, uint64) {
	ev := Event{
		RequestID:    uint64(ce.request_id),
		Kind:         EventKind(ce.kind),
		Index:        int(ce.index),
		FinishReason: FinishReason(ce.reason),
	}
	if n := int(ce.num_tokens); n > 0 && ce.tokens != nil {
		ev.TokenIDs = make([]uint32, n)
		copy(ev.TokenIDs, unsafe.Slice((*uint32)(unsafe.Pointer(ce.tokens)), n))
	}
	if ce.text_len > 0 {
		ev.Text = C.GoStringN(ce.text, C.int(ce.text_len))
	}
	if ce.has_stop != 0 {
		t := uint32(ce.stop_token)
		ev.StopTokenID = &t
	}
	if ce.stop_string != nil {
		ev.StopString = C.GoString(ce.stop_string)
	}
	if ce.has_usage != 0 {
		ev.Usage = &Usage{
			PromptTokens:       uint64(ce.usage[0]),
			CompletionTokens:   uint64(ce.usage[1]),
			CachedPromptTokens: uint64(ce.usage[2]),
		}
	}
	if ce.error != nil {
		ev.ErrorMessage = C.GoString(ce.error)
	}
	if ce.has_cumulative_logprob != 0 {
		v := float64(ce.cumulative_logprob)
		ev.CumulativeLogprob = &v
	}
	if ce.reasoning != nil && *ce.reasoning != 0 {
		ev.Reasoning = C.GoString(ce.reasoning)
	}
	if ce.tool_calls != nil {
		ev.ToolCalls = decodeToolCalls(C.GoString(ce.tool_calls))
	}
	ev.Logprobs = copyLogprobs(evs, i, int(ce.num_logprobs), false)
	ev.PromptLogprobs = copyLogprobs(evs, i, int(ce.num_prompt_logprobs), true)
	return ev, uint64(ce.user_tag)
}

// copyLogprobs copies the n logprob entries of event i: the generated tokens' or, with
// prompt set, the prompt's. nil when n is 0.
func copyLogprobs(evs *C.llmrt_events, i, n int, prompt bool) []Logprob {
	if n == 0 {
		return nil
	}
	out := make([]Logprob, 0, n)
	var ids []C.uint32_t
	var lps []C.float
	var ranks []C.uint32_t
	for p := 0; p < n; p++ {
		// Entry 0 of the buffers is the token itself, then its alternatives.
		k := int(C.llmrt_go_top_count(evs, C.size_t(i), C.size_t(p), C.bool(prompt)))
		if cap(ids) < k+1 {
			ids, lps, ranks = make([]C.uint32_t, k+1), make([]C.float, k+1), make([]C.uint32_t, k+1)
		}
		got := int(C.llmrt_go_read_logprob(evs, C.size_t(i), C.size_t(p), C.bool(prompt),
			&ids[0], &lps[0], &ranks[0], C.size_t(k+1)))
		if got == 0 {
			continue // no entry at p (not expected: n counts the entries)
		}
		l := Logprob{TokenID: uint32(ids[0]), Logprob: float32(lps[0]), Rank: uint32(ranks[0])}
		if got > 1 {
			l.Top = make([]TopLogprob, got-1)
			for j := range l.Top {
				l.Top[j] = TopLogprob{TokenID: uint32(ids[j+1]), Logprob: float32(lps[j+1]), Rank: uint32(ranks[j+1])}
			}
		}
		out = append(out, l)
	}
	return out
}

// Tokenize turns text into token ids with the engine's tokenizer; addSpecialTokens
// applies the tokenizer's post-processor (e.g. BOS), as a Prompt request does.
func (e *Engine) Tokenize(text string, addSpecialTokens bool) ([]uint32, error) {
	if err := e.acquire(); err != nil {
		return nil, err
	}
	defer e.mu.RUnlock()
	var p *C.char
	if len(text) > 0 {
		p = (*C.char)(unsafe.Pointer(unsafe.StringData(text)))
	}
	var ids *C.uint32_t
	var n C.size_t
	if err := e.callErr(C.llmrt_tokenize(e.ptr, p, C.size_t(len(text)), C.bool(addSpecialTokens), &ids, &n)); err != nil {
		return nil, err
	}
	out := make([]uint32, int(n))
	if n > 0 {
		copy(out, unsafe.Slice((*uint32)(unsafe.Pointer(ids)), int(n)))
	}
	C.llmrt_tokens_free(ids)
	return out, nil
}

// Detokenize turns token ids into text; skipSpecialTokens leaves BOS, EOS, ... out.
// A token id outside the vocabulary gives ErrInvalidRequest.
func (e *Engine) Detokenize(tokenIDs []uint32, skipSpecialTokens bool) (string, error) {
	if err := e.acquire(); err != nil {
		return "", err
	}
	defer e.mu.RUnlock()
	var ids *C.uint32_t
	if len(tokenIDs) > 0 {
		ids = (*C.uint32_t)(unsafe.Pointer(&tokenIDs[0]))
	}
	var text *C.char
	var n C.size_t
	if err := e.callErr(C.llmrt_detokenize(e.ptr, ids, C.size_t(len(tokenIDs)), C.bool(skipSpecialTokens), &text, &n)); err != nil {
		return "", err
	}
	return takeString(text, n), nil
}

// ApplyChatTemplate renders a chat with the model's chat template, as a Messages request
// would before tokenizing (tokenize the result with addSpecialTokens false).
// Errors: ErrInvalidRequest (no messages, a model without a chat template, ...),
// ErrTemplate (the template raised an error), ErrClosed.
func (e *Engine) ApplyChatTemplate(chat Chat) (string, error) {
	if chat.Messages == nil {
		chat.Messages = []Message{}
	}
	b, err := json.Marshal(chat)
	if err != nil {
		return "", errorf(StatusInvalidRequest, "%v", err)
	}
	return e.ApplyChatTemplateJSON(b)
}

// ApplyChatTemplateJSON is ApplyChatTemplate with the chat given as JSON
// (llmrt_apply_chat_template's chat_json).
func (e *Engine) ApplyChatTemplateJSON(chatJSON []byte) (string, error) {
	buf := cBytes(chatJSON)
	if err := e.acquire(); err != nil {
		return "", err
	}
	defer e.mu.RUnlock()
	var text *C.char
	var n C.size_t
	if err := e.callErr(C.llmrt_apply_chat_template(e.ptr, (*C.char)(unsafe.Pointer(&buf[0])), &text, &n)); err != nil {
		return "", err
	}
	return takeString(text, n), nil
}

// MetricsJSON is the engine's metrics as a JSON object (vLLM's metric names).
func (e *Engine) MetricsJSON() (string, error) {
	return e.stringCall(func(p *C.llmrt_engine, s **C.char) *C.llmrt_error {
		return C.llmrt_engine_metrics_json(p, s)
	})
}

// MetricsPrometheus is the engine's metrics in Prometheus' text exposition format, names
// prefixed llmrt_ (ready to serve on /metrics).
func (e *Engine) MetricsPrometheus() (string, error) {
	return e.stringCall(func(p *C.llmrt_engine, s **C.char) *C.llmrt_error {
		return C.llmrt_engine_metrics_prometheus(p, s)
	})
}

// ModelInfoJSON is facts about the engine's model and limits, as JSON.
func (e *Engine) ModelInfoJSON() (string, error) {
	return e.stringCall(func(p *C.llmrt_engine, s **C.char) *C.llmrt_error {
		return C.llmrt_engine_model_info(p, s)
	})
}

// ModelInfo parses ModelInfoJSON.
func (e *Engine) ModelInfo() (*ModelInfo, error) {
	raw, err := e.ModelInfoJSON()
	if err != nil {
		return nil, err
	}
	var m ModelInfo
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return nil, err
	}
	m.Raw = json.RawMessage(raw)
	return &m, nil
}

func (e *Engine) stringCall(call func(*C.llmrt_engine, **C.char) *C.llmrt_error) (string, error) {
	if err := e.acquire(); err != nil {
		return "", err
	}
	defer e.mu.RUnlock()
	var s *C.char
	if err := e.callErr(call(e.ptr, &s)); err != nil {
		return "", err
	}
	out := C.GoString(s)
	C.llmrt_string_free(s)
	return out, nil
}

// takeString copies a library-owned string of n bytes and frees it.
func takeString(s *C.char, n C.size_t) string {
	out := C.GoStringN(s, C.int(n))
	C.llmrt_string_free(s)
	return out
}

// cBytes returns b with a NUL appended (the C API takes NUL-terminated JSON; the library
// does not retain it, so Go memory may be passed for the duration of the call).
func cBytes(b []byte) []byte {
	out := make([]byte, len(b)+1)
	copy(out, b)
	return out
}
