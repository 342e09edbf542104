//! The one decoder forward pass. (in progress)
