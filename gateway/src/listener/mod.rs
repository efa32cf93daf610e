//! Everything between an accepted socket and a parsed request head: the
//! connection loop (keep-alive, head deadlines, pipelining, chunked framing
//! checks) and the assembly of the Pingora server with its services.

mod arrived;
mod chunk_framing;
pub mod connections;
mod head_wait;
mod idle_clock;
pub mod proxy_protocol;
pub mod server;
