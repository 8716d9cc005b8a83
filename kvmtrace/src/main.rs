use std::process::ExitCode;

fn main() -> ExitCode {
    kvmtrace::cli::main()
}
