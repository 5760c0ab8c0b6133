//! The `pgward` binary: parse the command line and hand over to [`pgward::cli`].

fn main() -> std::process::ExitCode {
    pgward::cli::main()
}
