//! Process-wide logging through `tracing`. Pingora logs through the `log`
//! crate; tracing-subscriber's `tracing-log` bridge picks those lines up.

use crate::config::AccessLogFormat;
use tracing_subscriber::EnvFilter;

/// Set up logging once. `RUST_LOG` overrides the default `info` level.
pub fn init(format: AccessLogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald gets plain
    // `key=value` fields that grep and log shippers read as written.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        AccessLogFormat::Json => builder.json().flatten_event(true).try_init(),
        AccessLogFormat::Text | AccessLogFormat::Off => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}
