//! Saved plans (filled in below).
