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
        (a @ ("cursor" | "copilot"), true) => {
            bail!(
                "{a} keeps user-wide instructions in its settings, not in a file: write it per project (leave out --global)"
            )
        }
        (other, _) => bail!("{other:?}: give claude, cursor, copilot, codex, opencode or all"),
    })
}

pub async fn write(d: &Daemon, agents: &[String], dir: &str, global: bool, print: bool) -> anyhow::Result<Reply> {
    let nodes: Vec<Node> = d.login()?.client()?.call::<proto::routes::ListNodes>(&[], &Default::default()).await?;
    let body = instructions(&nodes);
    let mut written = Vec::new();
    let mut text = String::new();
    for agent in agents {
        let t = target(agent, global)?;
        let path = Path::new(dir).join(t.path);
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
    if !print {
        text = format!("Wrote openbox's instructions for:\n{text}");
    }
    Ok(Reply::new(to_json(&written), text))
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

- `openbox -t TAG CMD…` runs CMD on an online node carrying TAG; `openbox -n NODE CMD…` on one node.
  Quote shell syntax as one word: `openbox -t linux 'cd /src && make -j8'`.
- Sessions keep a shell (directory, exported variables) across calls, on the same node:
  `openbox -t TAG -s build 'cd /src'` then `openbox -t TAG -s build make`. End one with
  `openbox session rm build`; list them with `openbox sessions`.
- Isolation: `--docker IMAGE` runs in a fresh container (`--cpus`, `--memory`, `--network none`,
  `--mount SRC:DST[:ro]`); `--nspawn DIR` in a systemd-nspawn container.
- Time and size: `--timeout 10m` stops a command (exit 124); `--max-output 64k` keeps the head
  and tail of each stream with a `[… N bytes omitted …]` mark — use it for commands that may
  print a lot.
- Many nodes at once: `openbox -t TAG --all CMD` prefixes each line with the node's name and
  prints a summary; `--json` gives one result per node.
- Exit codes: the remote command's own; 128+N when a signal killed it; 124 after `--timeout`;
  255 when openbox itself could not run it (the message on stderr says why: no such tag, node
  offline, not allowed). With `--all`: the largest remote code, 255 if a node was unreachable.
- stdin is forwarded to one-shot commands: `tar c . | openbox -n NODE 'tar x -C /dst'`.
- An MCP server is there too: `openbox mcp` (tools `run`, `run_all`, `list_nodes`,
  `list_sessions`, `end_session`, and `start`/`read`/`wait`/`stop` for long work).
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
}
