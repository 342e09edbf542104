package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"llmrt.dev/llmrt"
)

// apiError is an error answered in OpenAI's shape:
// {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}.
type apiError struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

// badRequest is a 400 about one request field (param may be "").
func badRequest(param, format string, args ...any) *apiError {
	e := &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Message: fmt.Sprintf(format, args...)}
	if param != "" {
		e.Param = &param
	}
	return e
}

func newAPIError(status int, typ, code, format string, args ...any) *apiError {
	e := &apiError{Status: status, Type: typ, Message: fmt.Sprintf(format, args...)}
	if code != "" {
		e.Code = &code
	}
	return e
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	json.NewEncoder(w).Encode(map[string]*apiError{"error": e})
}

// libraryError turns an error of the llmrt binding into the HTTP error a client gets:
// the library validates requests (unknown field, value out of range, ...), so its
// message is the client's answer.
func libraryError(err error) *apiError {
	var le *llmrt.Error
	if !errors.As(err, &le) {
		return newAPIError(http.StatusInternalServerError, "server_error", "", "%v", err)
	}
	switch le.Code {
	case llmrt.StatusInvalidRequest, llmrt.StatusInvalidJSON, llmrt.StatusInvalidArgument,
		llmrt.StatusTemplate, llmrt.StatusTokenizer, llmrt.StatusUnsupported:
		return badRequest(paramOf(le.Message), "%s", le.Message)
	case llmrt.StatusEngineStopped:
		return newAPIError(http.StatusServiceUnavailable, "server_error", "", "the engine is stopped")
	}
	return newAPIError(http.StatusInternalServerError, "server_error", "", "%s", le.Message)
}

var (
	// The library names the offending field in backquotes ("unknown field `x`") or
	// first ("top_p must be in (0, 1]", "structured_outputs.regex: cannot compile ...").
	quotedField  = regexp.MustCompile("`([a-z_][a-z0-9_.]*)`")
	leadingField = regexp.MustCompile(`^([a-z_][a-z0-9_.]*)(?: (?:must|is|has)\b|: )`)
)

// paramOf extracts the request field an llmrt error message is about, for the
// error's "param" ("" when it names none).
func paramOf(msg string) string {
	msg = strings.TrimPrefix(msg, "invalid request: ")
	if m := leadingField.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	if m := quotedField.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	return ""
}
