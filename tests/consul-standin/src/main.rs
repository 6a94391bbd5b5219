//! A stand-in for the Consul agent HTTP API.
fn main() {}
