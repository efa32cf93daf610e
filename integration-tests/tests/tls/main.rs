//! TLS with real clients: certificates chosen by SNI, HTTP/2 and HTTP/1.1 by
//! ALPN, a certificate renewed on disk under load with zero failed requests,
//! bad certificates refused at check, start and reload, the plain-HTTP
//! redirect, and TLS to upstreams (a second gateway serves as the TLS
//! backend). Certificates are made at run time with rcgen.
//!
//! One test binary; each module does one thing: `pki` makes certificates and
//! the TLS gateway and clients the others use.

mod certificates;
mod check;
mod pki;
mod serving;
mod upstream;
