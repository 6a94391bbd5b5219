//! The `fleet` binary: parse the command line, run the command, turn errors into diagnostics.
use std::process::ExitCode;

fn main() -> ExitCode {
    fleet::cli::main()
}
