use std::process::ExitCode;

fn main() -> ExitCode {
    kvmtrace::cmd::main()
}
