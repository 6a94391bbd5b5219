//! Rendering (filled in below).
