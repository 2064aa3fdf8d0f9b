//! What is generated from the command line's own definition: shell completions
//! (`openbox completions SHELL`) and manual pages (`openbox man --out DIR`, run when the
//! packages are built), so that neither can drift from the flags.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};

use clap::CommandFactory as _;

use crate::args::{Cli, Shell};

pub fn completions(shell: Shell) -> ExitCode {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut Cli::command(), "openbox", &mut script);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`), as for a remote command's output.
        Err(_) => ExitCode::from(141),
    }
}

/// openbox.1, and openbox-COMMAND.1 for each command (openbox-node-add.1 for `node add`).
/// `openbox control` and `openbox agent` only hand their arguments on, so their pages come
/// from the binaries that parse them, beside this one.
pub fn man_pages(dir: &Path) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir)) {
        eprintln!("openbox: cannot write the manual pages into {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for binary in ["openbox-control", "openbox-agent"] {
        let wrote = Command::new(paths::sibling_binary(binary)).arg(proto::MAN_PAGES_ARG).arg(dir).status();
        if !wrote.is_ok_and(|s| s.success()) {
            eprintln!("openbox: {binary} did not write its manual pages into {}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
