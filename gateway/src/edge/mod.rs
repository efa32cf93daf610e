//! Edge concerns: who the client is (client IP, path normalization), whether
//! it is let in (blacklist, rate limits), and what a route answers when its
//! upstream cannot or must not (fallback pages, degrade).

pub mod accept_filter;
pub mod blacklist;
pub mod client_ip;
pub mod fallback;
pub mod ipset;
pub mod limits;
pub mod path;
pub mod rate_limit;
pub mod runtime_blacklist;
pub mod static_lists;
