package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"llmrt.dev/llmrt"
)

// serverConfig is what the HTTP side needs to know; the engine's own options went to
// llmrt.New.
type serverConfig struct {
	// ModelName is the name clients give as "model" (and /v1/models lists).
	ModelName string
	// ModelPath is the model's file or folder, listed as the model's root.
	ModelPath string
	// APIKey, when set, is required as "Authorization: Bearer <key>" on /v1/.
	APIKey string
	// MaxInFlight bounds the generation requests admitted at once (running plus
	// waiting); more get 503 with Retry-After.
	MaxInFlight int
	// MaxBodyBytes bounds a request body; larger ones get 413.
	MaxBodyBytes int64
	// ReasoningParser names the library's reasoning parser, asked for on every chat
	// request ("" none): answers then carry reasoning_content.
	ReasoningParser string
	// ToolCallParser names the library's tool-call parser, asked for on chat requests
	// whose tool_choice is auto ("" none).
	ToolCallParser string
	// AutoToolChoice serves tool_choice auto (vLLM's --enable-auto-tool-choice); without
	// it (or without ToolCallParser), auto with tools is a 400, as in vLLM.
	AutoToolChoice bool
}

// Server is the OpenAI-compatible HTTP front of one engine.
type Server struct {
	eng     *llmrt.Engine
	cfg     serverConfig
	log     *slog.Logger
	created int64
	// maxModelLen is the default max_tokens of chat requests (the library stops at the
	// end of the context).
	maxModelLen int
	tokens      *tokenTexts

	inFlight atomic.Int64
	rejected atomic.Uint64
	// draining is set when shutdown begins: new generations get 503, /health too.
	draining atomic.Bool
	// baseCtx is every request's parent; abortAll cancels it, aborting every
	// generation in the engine.
	baseCtx  context.Context
	abortAll context.CancelFunc
}

func newServer(eng *llmrt.Engine, cfg serverConfig, log *slog.Logger) (*Server, error) {
	info, err := eng.ModelInfo()
	if err != nil {
		return nil, err
	}
	if err := checkParsers(eng, cfg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		eng:         eng,
		cfg:         cfg,
		log:         log,
		created:     time.Now().Unix(),
		maxModelLen: info.MaxModelLen,
		tokens:      newTokenTexts(eng),
		baseCtx:     ctx,
		abortAll:    cancel,
	}, nil
}

// routes are the server's endpoints by path and method (a known path asked with
// another method gets 405, an unknown one 404).
func (s *Server) routes() map[string]map[string]http.HandlerFunc {
	return map[string]map[string]http.HandlerFunc{
		"/v1/completions":      {http.MethodPost: s.generation(s.completions)},
		"/v1/chat/completions": {http.MethodPost: s.generation(s.chatCompletions)},
		"/v1/models":           {http.MethodGet: s.models},
		"/metrics":             {http.MethodGet: s.metrics},
		"/health":              {http.MethodGet: s.health},
		"/version":             {http.MethodGet: s.version},
	}
}

// route finds the handlers of a path: one of routes, or a model's card
// (/v1/models/{id}).
func (s *Server) route(routes map[string]map[string]http.HandlerFunc, path string) (map[string]http.HandlerFunc, bool) {
	if h, ok := routes[path]; ok {
		return h, true
	}
	if id, ok := strings.CutPrefix(path, "/v1/models/"); ok && id != "" {
		return map[string]http.HandlerFunc{http.MethodGet: func(w http.ResponseWriter, r *http.Request) { s.model(w, id) }}, true
	}
	return nil, false
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler {
	routes := s.routes()
	return s.logRequests(s.authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		byMethod, ok := s.route(routes, r.URL.Path)
		if !ok {
			writeError(w, newAPIError(http.StatusNotFound, "invalid_request_error", "",
				"no such endpoint: %s %s", r.Method, r.URL.Path))
			return
		}
		h, ok := byMethod[r.Method]
		if !ok && r.Method == http.MethodHead {
			h, ok = byMethod[http.MethodGet]
		}
		if !ok {
			for m := range byMethod {
				w.Header().Set("Allow", m)
			}
			writeError(w, newAPIError(http.StatusMethodNotAllowed, "invalid_request_error", "",
				"method %s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		h(w, r)
	})))
}

// authenticate requires the API key on the OpenAI routes (/v1/...) when one is set;
// /health and /metrics stay open for probes and scrapers, as in vLLM.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if s.cfg.APIKey == "" {
		return next
	}
	want := []byte("Bearer " + s.cfg.APIKey)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if strings.HasPrefix(r.URL.Path, "/v1/") && subtle.ConstantTimeCompare(got, want) != 1 {
			writeError(w, newAPIError(http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
				"invalid or missing API key (Authorization: Bearer <key>)"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// statusRecorder remembers the status a handler answered, for the access log. It
// passes Flush through (http.ResponseController finds it with Unwrap).
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		level := slog.LevelInfo
		if r.URL.Path == "/health" || r.URL.Path == "/metrics" {
			level = slog.LevelDebug // probes and scrapes would drown the log
		}
		s.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration", time.Since(start).Round(time.Millisecond))
	})
}

// generation wraps the generating endpoints: refused while shutting down or when
// MaxInFlight requests are admitted already (503 with Retry-After, instead of an
// unbounded queue), with the body size limited.
func (s *Server) generation(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			s.rejected.Add(1)
			writeError(w, newAPIError(http.StatusServiceUnavailable, "server_error", "", "the server is shutting down"))
			return
		}
		if s.inFlight.Add(1) > int64(s.cfg.MaxInFlight) {
			s.inFlight.Add(-1)
			s.rejected.Add(1)
			w.Header().Set("Retry-After", "1")
			writeError(w, newAPIError(http.StatusServiceUnavailable, "server_error", "overloaded",
				"the server is overloaded (%d requests in flight); retry later", s.cfg.MaxInFlight))
			return
		}
		defer s.inFlight.Add(-1)
		if r.ContentLength > s.cfg.MaxBodyBytes {
			writeError(w, bodyTooLarge(s.cfg.MaxBodyBytes))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		h(w, r)
	}
}

func bodyTooLarge(limit int64) *apiError {
	return newAPIError(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
		"the request body is larger than %d bytes", limit)
}

// decodeBody reads a JSON request body into v.
func decodeBody(r *http.Request, v any) *apiError {
	dec := json.NewDecoder(r.Body)
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("data after the JSON object")
	}
	var tooLarge *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooLarge):
		return bodyTooLarge(tooLarge.Limit)
	case errors.As(err, &typeErr):
		// Field is the Go path, which names the embedded struct of the shared fields.
		field := strings.TrimPrefix(typeErr.Field, "commonRequest.")
		return badRequest(field, "%s must be %s, got a JSON %s", field, goTypeName(typeErr.Type.String()), typeErr.Value)
	}
	return badRequest("", "the request body is not valid JSON: %v", err)
}

// goTypeName names a Go type the way an API user thinks of it.
func goTypeName(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "float"):
		return "a number"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	}
	return "an object"
}

// checkModel accepts the served model's name (or none: the one model is meant).
func (s *Server) checkModel(name string) *apiError {
	if name == "" || name == s.cfg.ModelName {
		return nil
	}
	// A bad request (400), with OpenAI's and vLLM's code model_not_found.
	e := newAPIError(http.StatusBadRequest, "invalid_request_error", "model_not_found",
		"the model %q does not exist; this server serves %q", name, s.cfg.ModelName)
	param := "model"
	e.Param = &param
	return e
}

// checkParsers makes the library validate the configured parser names now rather than
// on every request: it submits a one-token request naming them and aborts it at once.
func checkParsers(eng *llmrt.Engine, cfg serverConfig) error {
	if cfg.ReasoningParser == "" && cfg.ToolCallParser == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := eng.Submit(ctx, llmrt.Request{
		PromptTokenIDs: []uint32{0}, ReasoningParser: cfg.ReasoningParser, ToolCallParser: cfg.ToolCallParser,
		SamplingParams: llmrt.SamplingParams{MaxTokens: 1},
	})
	if err != nil {
		return fmt.Errorf("--reasoning-parser %q, --tool-call-parser %q: %w", cfg.ReasoningParser, cfg.ToolCallParser, err)
	}
	cancel()
	for range events {
	}
	return nil
}

func (s *Server) card() modelCard {
	return modelCard{
		ID: s.cfg.ModelName, Object: "model", Created: s.created, OwnedBy: "llmrt",
		Root: s.cfg.ModelPath, MaxModelLen: s.maxModelLen,
	}
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, modelList{Object: "list", Data: []modelCard{s.card()}})
}

// model answers GET /v1/models/{id}.
func (s *Server) model(w http.ResponseWriter, id string) {
	if id != s.cfg.ModelName {
		writeError(w, newAPIError(http.StatusNotFound, "invalid_request_error", "model_not_found",
			"the model %q does not exist; this server serves %q", id, s.cfg.ModelName))
		return
	}
	writeJSON(w, s.card())
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]string{"version": llmrt.Version()})
}

// health answers 200 while the engine serves: it is not shutting down and answers
// calls (a failed engine refuses every call with LLMRT_ERROR_INTERNAL).
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeError(w, newAPIError(http.StatusServiceUnavailable, "server_error", "", "the server is shutting down"))
		return
	}
	if _, err := s.eng.MetricsJSON(); err != nil {
		writeError(w, newAPIError(http.StatusServiceUnavailable, "server_error", "", "the engine does not serve: %v", err))
		return
	}
	w.WriteHeader(http.StatusOK)
}

// metrics serves the engine's Prometheus text and the server's own counters.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	text, err := s.eng.MetricsPrometheus()
	if err != nil {
		writeError(w, newAPIError(http.StatusServiceUnavailable, "server_error", "", "the engine does not serve: %v", err))
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	fmt.Fprint(w, text)
	fmt.Fprintf(w, "# HELP llmrt_server_requests_in_flight Generation requests admitted and not finished.\n"+
		"# TYPE llmrt_server_requests_in_flight gauge\nllmrt_server_requests_in_flight %d\n", s.inFlight.Load())
	fmt.Fprintf(w, "# HELP llmrt_server_requests_rejected_total Generation requests refused with 503 (overload, shutdown).\n"+
		"# TYPE llmrt_server_requests_rejected_total counter\nllmrt_server_requests_rejected_total %d\n", s.rejected.Load())
}

// noteEngineError logs an engine that failed (a bug in the library): /health then
// reports it, since the engine refuses every call from then on.
func (s *Server) noteEngineError(err error) {
	if llmrt.StatusOf(err) == llmrt.StatusInternal {
		s.log.Error("the engine failed", "err", err)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// newID is an answer's id: prefix and 24 random hex digits.
func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
