package llmrt

/*
#include "llmrt.h"
*/
import "C"

import (
	"errors"
	"fmt"
)

// Status is an llmrt status code (the C enum llmrt_status). The values are fixed by the C
// ABI: new codes may be added, none is ever renumbered.
type Status int32

// The status codes of the C API.
const (
	StatusOK              Status = C.LLMRT_OK
	StatusInvalidArgument Status = C.LLMRT_ERROR_INVALID_ARGUMENT
	StatusInvalidJSON     Status = C.LLMRT_ERROR_INVALID_JSON
	StatusInvalidRequest  Status = C.LLMRT_ERROR_INVALID_REQUEST
	StatusInvalidConfig   Status = C.LLMRT_ERROR_INVALID_CONFIG
	StatusInvalidModel    Status = C.LLMRT_ERROR_INVALID_MODEL
	StatusUnsupported     Status = C.LLMRT_ERROR_UNSUPPORTED
	StatusIO              Status = C.LLMRT_ERROR_IO
	StatusTokenizer       Status = C.LLMRT_ERROR_TOKENIZER
	StatusTemplate        Status = C.LLMRT_ERROR_TEMPLATE
	StatusEngineStopped   Status = C.LLMRT_ERROR_ENGINE_STOPPED
	StatusInternal        Status = C.LLMRT_ERROR_INTERNAL
	StatusCancelled       Status = C.LLMRT_ERROR_CANCELLED
)

// String returns the code's static C name, e.g. "LLMRT_ERROR_INVALID_JSON"
// ("LLMRT_ERROR_UNKNOWN" for a value that is not a code).
func (s Status) String() string {
	return C.GoString(C.llmrt_error_code_name(C.int32_t(s)))
}

// Error is an error reported by the llmrt library: its status code and the library's
// message (which names the offending argument or JSON field).
//
// Compare errors with errors.Is against the sentinel values below (ErrInvalidRequest,
// ...): any *Error matches the sentinel of its code. StatusOf extracts the code.
type Error struct {
	Code    Status
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "llmrt: " + e.Code.String()
	}
	return "llmrt: " + e.Code.String() + ": " + e.Message
}

// Is reports whether target is a sentinel (an *Error without a message) of the same code,
// or the very same error. It makes errors.Is(err, ErrInvalidRequest) work for every
// invalid-request error the library returns.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t.Message == "" {
		return t.Code == e.Code
	}
	return t == e
}

// Sentinel errors, one per status code, for errors.Is.
var (
	ErrInvalidArgument = &Error{Code: StatusInvalidArgument}
	ErrInvalidJSON     = &Error{Code: StatusInvalidJSON}
	ErrInvalidRequest  = &Error{Code: StatusInvalidRequest}
	ErrInvalidConfig   = &Error{Code: StatusInvalidConfig}
	ErrInvalidModel    = &Error{Code: StatusInvalidModel}
	ErrUnsupported     = &Error{Code: StatusUnsupported}
	ErrIO              = &Error{Code: StatusIO}
	ErrTokenizer       = &Error{Code: StatusTokenizer}
	ErrTemplate        = &Error{Code: StatusTemplate}
	ErrEngineStopped   = &Error{Code: StatusEngineStopped}
	ErrInternal        = &Error{Code: StatusInternal}
	ErrCancelled       = &Error{Code: StatusCancelled}
)

// ErrClosed is returned by every method of an Engine after Close (it also matches
// ErrEngineStopped: errors.Is(ErrClosed, ErrEngineStopped) is true).
var ErrClosed = &Error{Code: StatusEngineStopped, Message: "the engine is closed"}

// ErrRequestFailed is wrapped by Event.Err for a request that finished with
// FinishError (the library's reason is in Event.ErrorMessage).
var ErrRequestFailed = errors.New("llmrt: request failed")

// StatusOf returns the llmrt status code carried by err (StatusOK for nil, and
// StatusInternal for an error that does not come from llmrt).
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return StatusInternal
}

// takeError converts a C error into a Go error and frees it. nil for NULL.
func takeError(cerr *C.llmrt_error) error {
	if cerr == nil {
		return nil
	}
	e := &Error{
		Code:    Status(C.llmrt_error_code(cerr)),
		Message: C.GoString(C.llmrt_error_message(cerr)),
	}
	C.llmrt_error_free(cerr)
	return e
}

func errorf(code Status, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
