package llmrt

// This file holds the one Go function exported to C (cgo forbids C definitions in the
// preamble of a file with //export): the load-progress trampoline's target.

/*
#include <stdint.h>
#include <stdbool.h>
*/
import "C"

import "runtime/cgo"

// progressState is what the cgo.Handle given to llmrt_engine_new refers to.
type progressState struct {
	fn       func(progress float32, stage string) bool
	panicked any
}

//export llmrtGoProgress
func llmrtGoProgress(handle C.uintptr_t, progress C.float, stage *C.char) C.bool {
	st, ok := cgo.Handle(handle).Value().(*progressState)
	if !ok || st.panicked != nil {
		return C.bool(false)
	}
	cont := false
	func() {
		// A panic must not unwind through the library's frames: it cancels the load, and
		// New panics again with it once the library has returned.
		defer func() {
			if r := recover(); r != nil {
				st.panicked = r
			}
		}()
		cont = st.fn(float32(progress), C.GoString(stage))
	}()
	return C.bool(cont)
}
