//! `resilience manpages --out DIR`: the man pages, made from the command
//! line's own definition (clap_mangen), so a flag added to `cli.rs` is in
//! the page of the next package. One page for `resilience` and one per
//! command (`resilience-node.1`, `resilience-edge.1`, `resilience-follow.1`,
//! ...); the exit codes close each page.

use crate::cli::{Cli, EXIT_CODES};
use clap::CommandFactory;
use std::path::Path;

/// Write `resilience.1` and `resilience-COMMAND.1` for every visible
/// command into `out`.
pub fn write(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let top = Cli::command();
    render(top.clone(), "resilience", out)?;
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("resilience-{}", sub.get_name());
        // clap names are &'static str; this command runs once and exits.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        let page = sub
            .clone()
            .name(leaked)
            .version(env!("CARGO_PKG_VERSION"))
            .after_help(EXIT_CODES);
        render(page, &name, out)?;
    }
    Ok(())
}

fn render(cmd: clap::Command, name: &str, out: &Path) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    std::fs::write(out.join(format!("{name}.1")), page)?;
    Ok(())
}
