//! The `lifeboat` command; everything lives in the library.

fn main() -> std::process::ExitCode {
    lifeboat::cli::main()
}
