//! Edge concerns that run before routing: who the client is.

pub mod client_ip;
