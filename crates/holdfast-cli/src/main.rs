//! `holdfast`: the command-line tool.

use clap::Parser;

/// Sessions that survive broken connections.
#[derive(Debug, Parser)]
#[command(name = "holdfast", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
