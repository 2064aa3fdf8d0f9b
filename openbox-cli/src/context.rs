//! Contexts on the CLI's side: which one a call is for — `--context`, else
//! `OPENBOX_CONTEXT`, else the one `openbox context use` chose, else `default` — decided
//! once here and handed to whatever the CLI starts (as `OPENBOX_CONTEXT`); and `openbox
//! context ls|show|use|rm`, done here without starting any daemon.

use std::process::ExitCode;

use paths::Context;
use proto::output::{ContextCurrent, ContextInfo, ContextRemoved, LoginWho};

use crate::args::ContextCommand;

/// Where the context a call is for was named; errors say it, so the user knows what to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Current,
    Default,
    /// The argument of `context use` or `context rm`.
    Argument,
}

/// The context a call is for, and what chose it.
pub struct Selected {
    pub context: Context,
    pub source: Source,
}

/// The context for this call: `flag`, else `OPENBOX_CONTEXT`, else the current one, else
/// the default. It may not exist yet (see [`Selected::existing`]).
pub fn select(flag: Option<Context>) -> Result<Selected, String> {
    if let Some(context) = flag {
        return Ok(Selected { context, source: Source::Flag });
    }
    let env = Context::from_env()?;
    if std::env::var_os(paths::CONTEXT_ENV).is_some_and(|v| !v.is_empty()) {
        return Ok(Selected { context: env, source: Source::Env });
    }
    Ok(match current()? {
        Some(context) => Selected { context, source: Source::Current },
        None => Selected { context: Context::default(), source: Source::Default },
    })
}

/// The context `openbox context use` chose, when it chose one other than the default.
fn current() -> Result<Option<Context>, String> {
    let file = paths::current_context_file();
    match std::fs::read_to_string(&file) {
        Ok(text) => Context::new(text.trim())
            .map(Some)
            .map_err(|e| format!("{} is damaged ({e}); `openbox context use default` mends it", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", file.display())),
    }
}

impl Selected {
    /// The context, when it exists; else why not, with the ones that do.
    pub fn existing(&self) -> Result<&Context, String> {
        if self.context.exists() {
            return Ok(&self.context);
        }
        let name = self.context.name();
        let login = format!("`openbox login --context {name} --server URL` makes it");
        let (from, fix) = match self.source {
            Source::Flag => (" (named by --context)", login),
            Source::Argument => ("", login),
            Source::Env => (" (named by OPENBOX_CONTEXT)", format!("unset OPENBOX_CONTEXT, or {login}")),
            Source::Current | Source::Default => {
                (" (chosen with `openbox context use`)", "`openbox context use default` goes back".to_owned())
            }
        };
        Err(format!("no context {name:?}{from}; the contexts are {}: {fix}", names()))
    }
}

/// The contexts' names, for messages.
fn names() -> String {
    paths::contexts().iter().map(|c| c.name().to_owned()).collect::<Vec<_>>().join(", ")
}

/// Carries out `openbox context …`; what it prints, and how it exits.
pub fn command(command: ContextCommand, selected: &Selected, json: bool) -> ExitCode {
    let done = match command {
        ContextCommand::Ls => Ok(list(selected, json)),
        ContextCommand::Show => selected
            .existing()
            .map(|c| if json { to_json(&ContextCurrent { current: c.name().into() }) } else { c.name().into() }),
        ContextCommand::Use { name } => choose(&name, json),
        ContextCommand::Rm { name } => remove(&name, selected, json),
    };
    match done {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("openbox: {msg}");
            ExitCode::from(1)
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("outputs serialize")
}

/// `context ls`: every context with its login, read from its file (no daemon asked).
fn list(selected: &Selected, json: bool) -> String {
    let infos: Vec<ContextInfo> = paths::contexts()
        .into_iter()
        .map(|c| {
            let who = std::fs::read(c.login_file()).ok().and_then(|b| serde_json::from_slice::<LoginWho>(&b).ok());
            ContextInfo {
                name: c.name().into(),
                current: c == selected.context,
                server: who.as_ref().map(|w| w.server.clone()),
                user: who.map(|w| w.user),
                socket: c.daemon_socket().display().to_string(),
            }
        })
        .collect();
    if json {
        return to_json(&infos);
    }
    let row = |name: &str, server: &str, user: &str| format!("{name:<20} {server:<32} {user}");
    let mut lines = vec![row("NAME", "SERVER", "USER")];
    for i in &infos {
        let name = if i.current { format!("{} *", i.name) } else { i.name.clone() };
        let server = i.server.as_deref().unwrap_or("(not logged in)");
        lines.push(row(&name, server, i.user.as_deref().unwrap_or("-")));
    }
    lines.join("\n")
}

/// `context use NAME`: remembers NAME as current (the default is remembered as no file).
fn choose(context: &Context, json: bool) -> Result<String, String> {
    Selected { context: context.clone(), source: Source::Argument }.existing()?;
    let file = paths::current_context_file();
    let written = if context.is_default() {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        paths::write_private(&file, format!("{context}\n").as_bytes())
    };
    written.map_err(|e| format!("writing {}: {e}", file.display()))?;
    if let Ok(env) = std::env::var(paths::CONTEXT_ENV)
        && !env.is_empty()
        && env != context.name()
    {
        eprintln!("openbox: OPENBOX_CONTEXT={env} still decides in this environment: unset it to use {context}");
    }
    let name = context.name();
    Ok(if json { to_json(&ContextCurrent { current: name.into() }) } else { format!("Now using context {name}.") })
}

/// `context rm NAME`: stops its openboxd, then removes its directories. Neither the
/// default nor the context in use may go.
fn remove(context: &Context, selected: &Selected, json: bool) -> Result<String, String> {
    let name = context.name();
    if context.is_default() {
        return Err("the default context cannot be removed; `openbox logout` forgets its login".into());
    }
    Selected { context: context.clone(), source: Source::Argument }.existing()?;
    let in_use = match selected.source {
        _ if current().ok().flatten().as_ref() == Some(context) => {
            Some("it is the current context: `openbox context use default` first")
        }
        Source::Env if &selected.context == context => Some("OPENBOX_CONTEXT names it: unset it first"),
        Source::Flag if &selected.context == context => Some("--context names it"),
        _ => None,
    };
    if let Some(why) = in_use {
        return Err(format!("context {name} is in use, so it stays: {why}"));
    }
    let daemon_stopped = crate::daemon::stop(&context.daemon_socket())?;
    remove_files(context)?;
    Ok(if json {
        to_json(&ContextRemoved { removed: name.into(), daemon_stopped })
    } else {
        format!("Removed context {name}{}.", if daemon_stopped { " (its openboxd is stopped)" } else { "" })
    })
}

/// Removes a context's directories, and the `contexts` directories left empty, so that
/// the last context gone leaves the files as they were before any.
pub fn remove_files(context: &Context) -> Result<(), String> {
    for dir in context.own_dirs() {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {e}", dir.display()));
            }
            _ => {}
        }
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent); // only when empty
        }
    }
    Ok(())
}
