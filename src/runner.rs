//! Model runner. (in progress)
