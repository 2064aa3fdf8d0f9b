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
    let script = with_fleet_names(shell, &String::from_utf8_lossy(&script));
    match std::io::stdout().write_all(script.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`), as for a remote command's output.
        Err(_) => ExitCode::from(141),
    }
}

/// The options whose values are the fleet's names: short and long flag, the value's name
/// in the generated script, and what `openbox __complete` lists for it.
const FLEET_NAMES: [(&str, &str, &str, &str); 4] = [
    ("-n", "--node", "NODE", "nodes"),
    ("-t", "--tag", "TAG", "tags"),
    ("-s", "--session", "SID", "sessions"),
    ("", "--context", "NAME", "contexts"),
];

/// The generated `script`, with the values of [`FLEET_NAMES`] completed from
/// `openbox __complete KIND` (the program being completed, so `obx` asks itself).
fn with_fleet_names(shell: Shell, script: &str) -> String {
    let kind_of = |flag: &str| FLEET_NAMES.iter().find(|f| flag == f.0 || flag == f.1).map(|f| f.3);
    match shell {
        // Each option's arm offers files; these offer names instead.
        Shell::Bash => {
            let mut out = String::with_capacity(script.len());
            let mut kind = None;
            for line in script.lines() {
                let trimmed = line.trim();
                match kind.take() {
                    Some(k) if trimmed == r#"COMPREPLY=($(compgen -f "${cur}"))"# => {
                        let indent = &line[..line.len() - line.trim_start().len()];
                        out.push_str(&format!(
                            r#"{indent}COMPREPLY=($(compgen -W "$("${{COMP_WORDS[0]}}" __complete {k} 2>/dev/null)" -- "${{cur}}"))"#
                        ));
                    }
                    _ => out.push_str(line),
                }
                out.push('\n');
                kind = trimmed.strip_suffix(')').and_then(kind_of);
            }
            out
        }
        Shell::Zsh => {
            // _arguments calls it with its own options for compadd first, the kind last.
            let helper = "_openbox_fleet_names() {\n    local -a names\n    names=(${(f)\"$(\"${words[1]}\" __complete ${@[-1]} 2>/dev/null)\"})\n    compadd \"${@[1,-2]}\" -a names\n}\n";
            let mut out = String::with_capacity(script.len() + helper.len());
            for (i, line) in script.lines().enumerate() {
                let mut line = line.to_owned();
                for (_, long, value, kind) in FLEET_NAMES {
                    let generic = format!(":{value}:_default");
                    let wanted = value != "NAME" || line.contains(&format!("'{long}="));
                    if wanted && line.contains(&generic) {
                        line = line.replace(&generic, &format!(":{value}:_openbox_fleet_names {kind}"));
                    }
                }
                out.push_str(&line);
                out.push('\n');
                if i == 0 {
                    out.push('\n');
                    out.push_str(helper);
                }
            }
            out
        }
        // fish takes more than one definition of an option: these add the names.
        Shell::Fish => {
            let mut out = script.to_owned();
            out.push_str("\nfunction __fish_openbox_fleet_names\n    set -l program (commandline -opc)[1]\n    $program __complete $argv 2>/dev/null\nend\n");
            for (short, long, _, kind) in FLEET_NAMES {
                let short = short.strip_prefix('-').map(|s| format!(" -s {s}")).unwrap_or_default();
                let long = long.trim_start_matches('-');
                out.push_str(&format!(
                    "complete -c openbox{short} -l {long} -x -a '(__fish_openbox_fleet_names {kind})'\n"
                ));
            }
            out
        }
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
