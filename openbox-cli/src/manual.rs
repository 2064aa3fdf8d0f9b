//! What is generated from the command line's own definition: shell completions
//! (`openbox completions SHELL`) and manual pages (`openbox man --out DIR`, run when the
//! packages are built), so that neither can drift from the flags.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

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
pub fn man_pages(dir: &Path) -> ExitCode {
    let written = std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openbox: cannot write the manual pages into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
