//! Edge concerns that run before routing: who the client is.

pub mod accept_filter;
pub mod blacklist;
pub mod client_ip;
pub mod ipset;
pub mod limits;
pub mod path;
pub mod rate_limit;
pub mod static_lists;
