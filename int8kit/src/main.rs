//! `int8kit`: see `int8kit --help`.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    int8kit::exit_status(int8kit::run(int8kit::Cli::parse()))
}
