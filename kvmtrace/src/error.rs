//! The error kinds that decide an exit code (the mapping is in `cmd`). Everything else is an
//! `anyhow` error with context.

/// The machine lacks what kvmtrace needs (root, BTF, a tracepoint, a loadable program): exit
/// code 3, with what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// A usage problem (a flag, an argument, a config file): exit code 2, with what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A usage error as an `anyhow::Error`, for commands that return those.
pub fn usage(msg: String) -> anyhow::Error {
    Usage(msg).into()
}
