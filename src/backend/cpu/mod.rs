//! CPU backend. (in progress)
