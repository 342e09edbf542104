//! Chat templates rendered with minijinja. (in progress)
