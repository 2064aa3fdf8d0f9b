//! `openbox skill`: openbox's instructions for AI coding agents, written where and how each
//! agent reads them. A file the agent shares with others (AGENTS.md, Copilot's
//! instructions) gets openbox's section between markers: written again, that section is
//! replaced and the rest of the file kept. A file that is openbox's own (a skill, a rule,
//! an agent) has its front matter at the top, then the same marked section.

use std::path::Path;

use anyhow::{Context as _, bail};
use proto::api::Node;

use crate::Daemon;
use crate::commands::{Reply, to_json};

const BEGIN: &str = "<!-- openbox:begin (written by `openbox skill`; edits inside are replaced) -->";
const END: &str = "<!-- openbox:end -->";

/// One agent's file: where it goes (relative to the project or the home directory) and
/// the front matter it starts with, if it is openbox's own file.
struct Target {
    agent: &'static str,
    path: &'static str,
    front_matter: Option<&'static str>,
}

const DESCRIPTION: &str = "Run commands, builds and containers on the machines of this openbox fleet (by tag or node name), keep state in sessions, and fan a command out over a tag. Use it instead of ssh for remote work.";

/// Agents with no file in the home directory: `openbox skill all --global` skips them.
const NO_USER_WIDE_FILE: [&str; 2] = ["cursor", "copilot"];
const WHY_NO_USER_WIDE_FILE: &str = "keeps user-wide instructions in its settings, not in a file";

fn target(agent: &str, global: bool) -> anyhow::Result<Target> {
    let t = |agent, path, front_matter| Target { agent, path, front_matter };
    Ok(match (agent, global) {
        ("claude", _) => t(
            "claude",
            ".claude/skills/openbox/SKILL.md",
            Some("---\nname: openbox\ndescription: \"{DESCRIPTION}\"\n---\n"),
        ),
        ("cursor", false) => t(
            "cursor",
            ".cursor/rules/openbox.mdc",
            Some("---\ndescription: \"{DESCRIPTION}\"\nglobs:\nalwaysApply: false\n---\n"),
        ),
        ("copilot", false) => t("copilot", ".github/copilot-instructions.md", None),
        ("codex", false) => t("codex", "AGENTS.md", None),
        ("codex", true) => t("codex", ".codex/AGENTS.md", None),
        ("opencode", false) => t(
            "opencode",
            ".opencode/agents/openbox.md",
            Some("---\ndescription: \"{DESCRIPTION}\"\nmode: subagent\n---\n"),
        ),
        ("opencode", true) => t(
            "opencode",
            ".config/opencode/agents/openbox.md",
            Some("---\ndescription: \"{DESCRIPTION}\"\nmode: subagent\n---\n"),
        ),
        (a, true) if NO_USER_WIDE_FILE.contains(&a) => {
            bail!("{a} {WHY_NO_USER_WIDE_FILE}: write it per project (leave out --global)")
        }
        (other, _) => bail!("{other:?}: give claude, cursor, copilot, codex, opencode or all"),
    })
}

/// An agent left out, and why.
#[derive(Debug, serde::Serialize)]
struct Skipped {
    agent: String,
    reason: &'static str,
}

/// Every agent `all` names.
const ALL: [&str; 5] = ["claude", "cursor", "copilot", "codex", "opencode"];

/// The files to write for `agents`, and the agents left out: `all` with `--global` writes
/// those that have a file in the home directory and skips the others, while one of those
/// named on its own is an error.
fn plan(agents: &[String], global: bool) -> anyhow::Result<(Vec<Target>, Vec<Skipped>)> {
    let (mut targets, mut skipped) = (Vec::<Target>::new(), Vec::new());
    // Every agent is checked before anything is written: an error leaves no file half-done.
    for agent in agents {
        let (named, from_all) = match agent.as_str() {
            "all" => (ALL.to_vec(), true),
            one => (vec![one], false),
        };
        for agent in named {
            if targets.iter().any(|t| t.agent == agent) {
                continue;
            }
            if global && from_all && NO_USER_WIDE_FILE.contains(&agent) {
                skipped.push(Skipped { agent: agent.to_owned(), reason: WHY_NO_USER_WIDE_FILE });
                continue;
            }
            targets.push(target(agent, global)?);
        }
    }
    Ok((targets, skipped))
}

/// The directory a project's files go into: the root of the git work tree `dir` is in
/// (where agents look for them, whichever subdirectory they were started in), else `dir`.
/// `.git` is a directory, or a file in a linked work tree or a submodule.
fn project_root(dir: &Path) -> &Path {
    dir.ancestors().find(|d| d.join(".git").exists()).unwrap_or(dir)
}

pub async fn write(d: &Daemon, agents: &[String], dir: &str, global: bool, print: bool) -> anyhow::Result<Reply> {
    let (targets, skipped) = plan(agents, global)?;
    let nodes: Vec<Node> = d.login()?.client()?.call::<proto::routes::ListNodes>(&[], &Default::default()).await?;
    let body = instructions(&nodes);
    let asked = Path::new(dir);
    let root = if global { asked } else { project_root(asked) };
    let mut written = Vec::new();
    let mut text = String::new();
    for t in &targets {
        let path = root.join(t.path);
        let front = t.front_matter.map(|f| f.replace("{DESCRIPTION}", &DESCRIPTION.replace('"', "'")));
        if print {
            text += &format!("==> {} <==\n{}{BEGIN}\n{body}{END}\n\n", path.display(), front.as_deref().unwrap_or(""));
            continue;
        }
        let old = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let new = merged(&old, front.as_deref(), &body);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
        text += &format!("{:<9} {}\n", t.agent, path.display());
        written.push(serde_json::json!({"agent": t.agent, "path": path}));
    }
    let mut warnings = Vec::new();
    if print {
        // stdout is the files themselves; what was left out goes beside them.
        warnings =
            skipped.iter().map(|s| format!("skipped {}: it {}; write it per project", s.agent, s.reason)).collect();
    } else {
        let place = if global {
            format!("your home directory ({}), for every project", root.display())
        } else if root != asked {
            format!("{}, the root of the git work tree {} is in", root.display(), asked.display())
        } else {
            root.display().to_string()
        };
        text = format!("Wrote openbox's instructions into {place}:\n{text}");
        if !skipped.is_empty() {
            let names: Vec<&str> = skipped.iter().map(|s| s.agent.as_str()).collect();
            text += &format!(
                "Skipped, as they have no file in your home directory (run `openbox skill {}` in a project instead):\n",
                names.join(" ")
            );
            for s in &skipped {
                text += &format!("{:<9} {}\n", s.agent, s.reason);
            }
        }
    }
    let json = serde_json::json!({"dir": root, "written": written, "skipped": to_json(&skipped)});
    Ok(Reply { json, text, warnings })
}

/// `old` with openbox's section put in (replacing the one there), after the front matter.
fn merged(old: &str, front: Option<&str>, body: &str) -> String {
    let section = format!("{BEGIN}\n{body}{END}\n");
    let (begin, end) = (old.find(BEGIN), old.find(END));
    let mut rest = match (begin, end) {
        (Some(b), Some(e)) if e > b => {
            let after = &old[e + END.len()..];
            format!("{}{section}{}", &old[..b], after.strip_prefix('\n').unwrap_or(after))
        }
        _ if old.trim().is_empty() => section,
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    if let Some(front) = front {
        // Our own file: its front matter is ours too, always first.
        if rest.starts_with("---\n")
            && let Some(close) = rest[4..].find("\n---\n")
        {
            rest = rest[4 + close + 5..].trim_start_matches('\n').to_owned();
        }
        rest = format!("{front}\n{rest}");
    }
    rest
}

/// What an agent should know, with this fleet's tags.
fn instructions(nodes: &[Node]) -> String {
    let mut tags: Vec<&str> = nodes.iter().flat_map(|n| n.tags.iter().map(String::as_str)).collect();
    tags.sort_unstable();
    tags.dedup();
    let fleet = if tags.is_empty() {
        "No nodes are enrolled yet; `openbox nodes` lists them once they are.".to_owned()
    } else {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        format!(
            "This fleet's tags: {}. Its nodes: {}. `openbox nodes` shows which are online now.",
            tags.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
            names.join(", ")
        )
    };
    format!(
        r#"# openbox: run commands on this fleet's machines

Use `openbox` for work on other machines instead of `ssh`: it is faster, and the user is
already logged in.

{fleet}

## Where a command runs

- `openbox -t TAG CMD…` runs CMD on an online node carrying TAG, picked anew on every call:
  two calls with the same `-t` may run on different machines. For work in several steps
  (build, then test; edit, then run), stay on one node: `openbox -n NODE CMD…`, or a session.
- A session (`-s NAME`) is one shell on one node: `cd` and exported variables carry over from
  call to call. Give the same `-t TAG` (or `-n NODE`) and `-s NAME` on every call:
  `openbox -t TAG -s build 'cd ~/src/app && export CC=clang'`, then
  `openbox -t TAG -s build 'make -j8'`. `openbox sessions` lists them; `openbox session rm build`
  ends one.
- Quote shell syntax as one word, or your own shell runs it: `openbox -n NODE 'cd /src && make'`.

## Containers

- `--docker IMAGE` runs in a fresh container, removed afterwards (`--cpus`, `--memory`,
  `--network none`, `--mount SRC:DST[:ro]`); `--nspawn DIR` in a systemd-nspawn container.
- A session started with `--docker IMAGE` (or `--nspawn DIR`) keeps one container for all its
  calls, and every call to it must repeat the same `--docker IMAGE` and options: without
  them the call is refused and nothing runs.
  `openbox -t TAG -s ci --docker rust:1 'cd /work && cargo build'`, then
  `openbox -t TAG -s ci --docker rust:1 'cargo test'`.

## Files

- `openbox cp` copies files to and from a node as scp does, `-r` for directories:
  `openbox cp app.py NODE:/src/`, `openbox cp -r NODE:src/ ./src-copy`. `-s NAME` copies into
  or out of that session's container (the node side names the session's node). A
  `tag:TAG:PATH` side picks a node as `-t` does: name the node when you will run there next.
- Over MCP, use the file tools `read_file`, `write_file`, `edit_file`, `list_dir`, `stat`,
  `upload` and `download` instead of `cat`, `sed -i` or heredocs through `run`.

## Long work

- Many agents' shell tools stop a command after about 2 minutes. A build or test run that
  may take longer belongs in a job, which runs on the node whether or not anyone is connected and keeps
  its output: `openbox -n NODE --detach 'cd ~/src/app && make -j8'` prints the job's id at
  once; then `openbox job wait --timeout 90s ID` (exit 124 while it still runs, else the
  job's own code), `openbox job logs ID` (all its output so far; `-f` follows it to its end),
  `openbox jobs` to list them, `openbox job stop ID` to stop one.
- Over MCP the same jobs: `start` it, then `read` its output from offsets, `wait` for it to
  end (up to 50 s a call), `stop` it, `list_jobs`; `write_stdin` feeds one started with
  `stdin: true`. An interactive program (an editor, a REPL, a prompt) runs as a job with
  `terminal: {{"rows": 24, "cols": 80}}`: `screen` shows what it shows, `send_keys` types
  (`["i", "text", "Escape", ":wq", "Enter"]`); on the CLI `--detach --terminal 24x80`,
  `openbox job screen ID`, and keys through `openbox job send ID`.
- `--timeout 10m` stops a command (exit 124); `--max-output 64k` keeps the head and tail of
  each stream with a `[… N bytes omitted …]` mark — use it for commands that may print a lot.

## Results

- Exit codes: the remote command's own; 128+N when a signal killed it; 124 after `--timeout`;
  255 when openbox itself could not run it (the message on stderr says why: no such tag, node
  offline, not allowed).
- Many nodes at once: `openbox -t TAG --all CMD` prefixes each line with the node's name and
  prints a summary; `--json` gives one result per node; the exit code is the largest remote
  one, 255 if a node was unreachable.
- stdin is forwarded to one-shot commands: `tar c . | openbox -n NODE 'tar x -C /dst'`.
- MCP server: `openbox mcp` (tools `run`, `run_all`, `list_nodes`, `list_sessions`,
  `end_session`, the file tools above, and `start`/`read`/`wait`/`stop`/`list_jobs`/`write_stdin`
  for jobs, `screen`/`send_keys` for jobs in a terminal).
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_not_repeated_and_the_rest_is_kept() {
        let first = merged("# Mine\n\nkeep this\n", None, "one\n");
        assert!(first.starts_with("# Mine\n\nkeep this\n\n") && first.contains("one\n"), "{first}");
        let second = merged(&first, None, "two\n");
        assert_eq!(second.matches(BEGIN).count(), 1);
        assert!(second.contains("two\n") && !second.contains("one\n") && second.contains("keep this"), "{second}");
        let with_after = format!("{second}\n## Later\n");
        let third = merged(&with_after, None, "three\n");
        assert!(third.ends_with("## Later\n") && third.contains("three\n"), "{third}");

        let front = "---\nname: openbox\n---\n";
        let own = merged("", Some(front), "first body\n");
        assert!(own.starts_with(front), "{own}");
        let again = merged(&own, Some(front), "second body\n");
        assert_eq!(again.matches("---\nname: openbox").count(), 1, "{again}");
        assert!(again.contains("second body") && !again.contains("first body"), "{again}");
    }

    fn names(agents: &[&str]) -> Vec<String> {
        agents.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn all_global_skips_the_agents_without_a_user_wide_file_and_naming_one_is_an_error() {
        let all = names(&["all"]);
        let (targets, skipped) = plan(&all, true).unwrap();
        let paths: Vec<&str> = targets.iter().map(|t| t.path).collect();
        assert_eq!(
            paths,
            [".claude/skills/openbox/SKILL.md", ".codex/AGENTS.md", ".config/opencode/agents/openbox.md"]
        );
        let left_out: Vec<&str> = skipped.iter().map(|s| s.agent.as_str()).collect();
        assert_eq!(left_out, ["cursor", "copilot"]);
        assert!(skipped.iter().all(|s| s.reason.contains("settings")), "{skipped:?}");

        // In a project nothing is skipped.
        let (targets, skipped) = plan(&all, false).unwrap();
        assert_eq!((targets.len(), skipped.len()), (5, 0));

        // Named on its own, with another or not, it is refused before anything is written.
        for asked in [names(&["cursor"]), names(&["claude", "copilot"])] {
            let e = plan(&asked, true).err().expect("refused").to_string();
            assert!(e.contains("per project (leave out --global)"), "{e}");
        }
    }

    #[test]
    fn project_files_go_to_the_root_of_the_git_work_tree() {
        let top = tempfile::tempdir().unwrap();
        let repo = top.path().join("repo");
        let deep = repo.join("src/deep");
        std::fs::create_dir_all(&deep).unwrap();
        // Outside a work tree: the directory itself.
        assert_eq!(project_root(&deep), deep);
        std::fs::create_dir(repo.join(".git")).unwrap();
        assert_eq!(project_root(&deep), repo);
        assert_eq!(project_root(&repo), repo);
        // A linked work tree (or a submodule) has a .git file, and is a root of its own.
        let linked = deep.join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::fs::write(linked.join(".git"), "gitdir: /elsewhere\n").unwrap();
        assert_eq!(project_root(&linked.join("x")), linked);
    }

    #[test]
    fn the_text_teaches_where_commands_run_containers_files_and_long_work() {
        let text = instructions(&[]);
        for habit in [
            "picked anew on every call",
            "stay on one node: `openbox -n NODE CMD…`, or a session",
            "must repeat the same `--docker IMAGE`",
            "`openbox cp` copies files",
            "`read_file`, `write_file`, `edit_file`, `list_dir`, `stat`",
            "after about 2 minutes",
            "belongs in a job",
            "`openbox -n NODE --detach 'cd ~/src/app && make -j8'`",
            "Over MCP the same jobs: `start` it, then `read` its output",
        ] {
            assert!(text.contains(habit), "{habit:?} missing from:\n{text}");
        }
    }
}
