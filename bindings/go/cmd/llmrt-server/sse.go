package main

import (
	"encoding/json"
	"errors"
	"net/http"
)

// sseWriter writes a streamed answer as server-sent events: "data: {json}\n\n" per
// chunk, then "data: [DONE]\n\n", each flushed at once.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newSSE(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // proxies such as nginx must not hold chunks back
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// send writes one chunk. An error means the client is gone.
func (s *sseWriter) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.write(append(append([]byte("data: "), b...), '\n', '\n'))
}

func (s *sseWriter) done() error { return s.write([]byte("data: [DONE]\n\n")) }

func (s *sseWriter) write(b []byte) error {
	if _, err := s.w.Write(b); err != nil {
		return errClientGone
	}
	if err := s.rc.Flush(); err != nil {
		return errClientGone
	}
	return nil
}

// fail ends a stream whose headers are sent with the error as a chunk (how vLLM reports
// an error mid-stream), unless the client is gone.
func (s *sseWriter) fail(err error) {
	if errors.Is(err, errClientGone) {
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = newAPIError(http.StatusInternalServerError, "server_error", "", "%v", err)
	}
	if s.send(map[string]*apiError{"error": ae}) == nil {
		s.done()
	}
}
