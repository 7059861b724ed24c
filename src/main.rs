//! The `mailroom` command; everything is in [`mailroom::cli`].

fn main() -> std::process::ExitCode {
    mailroom::cli::main()
}
