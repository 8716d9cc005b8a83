//! The error kinds that decide an exit code (the mapping is in `cmd`). Everything else is an
//! `anyhow` error with context.

/// The machine lacks what kvmtrace needs (root, BTF, a tracepoint, a loadable program): exit
/// code 3, with what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);
