//! Log output on stderr: `RUST_LOG` filters (default `info` for `serve`),
//! `log.format` (or `--log-format`) chooses human-readable lines or one
//! JSON object per line carrying the fields of the current spans (`conn`:
//! id, peer; `session`: role, db). Libraries that would log statement
//! text, parameters or HTTP bodies are capped whatever `RUST_LOG` says:
//! pgveil's logs never carry values (docs/operations.md).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber (a second call does nothing).
pub fn init(default_level: &str, format: LogFormat) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    for d in [
        "sqlparser=off",
        "tokio_postgres=warn",
        "postgres_protocol=warn",
        "aws_smithy_runtime=info",
        "aws_smithy_http=info",
        "aws_smithy_runtime_api=info",
        "aws_sdk_kms=info",
        "aws_config=info",
        "aws_sigv4=info",
        "hyper=info",
        "hyper_util=info",
        "h2=info",
        "rustls=info",
    ] {
        filter = filter.add_directive(d.parse().expect("static directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(false)
            .try_init(),
    };
}
