//! The `hub` command. See `hub --help`.

fn main() -> std::process::ExitCode {
    medhub_hub::cli::main()
}
