//! `openbox skill`: openbox's instructions in each AI coding agent's own place and format.

use std::path::Path;

use openbox_e2e::{Agent, Cli, ControlPlane, Out};

/// The YAML front matter of `text`, parsed by Python's yaml module, as JSON.
fn front_matter(text: &str) -> serde_json::Value {
    let check = "import sys, yaml, json; t = sys.stdin.read(); assert t.startswith('---\\n'), t[:40]; \
                 print(json.dumps(yaml.safe_load(t.split('---\\n')[1])))";
    let mut child = std::process::Command::new("python3")
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with yaml");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "front matter does not parse: {text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_agents_file_is_written_once_with_this_fleets_tags_and_foreign_content_kept() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _gpu = Agent::enroll(&cp, &admin, &["gpu", "linux"]);
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::write(p.join("AGENTS.md"), "# Project rules\n\nUse tabs.\n").unwrap();
    let dir = p.to_str().unwrap();

    let out = admin.run(&["skill", "all", "--dir", dir]).ok();
    let files = [
        ".claude/skills/openbox/SKILL.md",
        ".cursor/rules/openbox.mdc",
        ".github/copilot-instructions.md",
        "AGENTS.md",
        ".opencode/agents/openbox.md",
    ];
    for f in files {
        assert!(out.stdout.contains(f), "{f} named: {out:?}");
        let text = std::fs::read_to_string(p.join(f)).unwrap();
        assert!(text.contains("openbox -t TAG") && text.contains("`gpu`") && text.contains("`linux`"), "{f}: {text}");
    }
    let skill = front_matter(&std::fs::read_to_string(p.join(files[0])).unwrap());
    assert_eq!(skill["name"], "openbox");
    assert!(skill["description"].as_str().unwrap().contains("openbox fleet"));
    let rule = front_matter(&std::fs::read_to_string(p.join(files[1])).unwrap());
    assert_eq!(rule["alwaysApply"], false);
    let agent = front_matter(&std::fs::read_to_string(p.join(files[4])).unwrap());
    assert_eq!(agent["mode"], "subagent");

    // Again: one copy each, the project's own rules untouched.
    admin.run(&["skill", "all", "--dir", dir]).ok();
    for f in files {
        let text = std::fs::read_to_string(p.join(f)).unwrap();
        assert_eq!(text.matches("<!-- openbox:begin").count(), 1, "{f}: {text}");
        assert_eq!(text.matches("---\nname: openbox").count(), usize::from(f == files[0]), "{f}");
    }
    let agents = std::fs::read_to_string(p.join("AGENTS.md")).unwrap();
    assert!(agents.starts_with("# Project rules\n\nUse tabs.\n"), "{agents}");

    // --print writes nothing; an unknown agent or a global Cursor rule is refused.
    let other = tempfile::tempdir().unwrap();
    let printed = admin.run(&["skill", "codex", "--print", "--dir", other.path().to_str().unwrap()]).ok();
    assert!(printed.stdout.contains("AGENTS.md") && printed.stdout.contains("openbox -t TAG"));
    assert!(std::fs::read_dir(other.path()).unwrap().next().is_none());
    admin.run(&["skill", "vim"]).fails_with(2, "give claude, cursor");
    admin.run(&["skill", "cursor", "--global"]).fails_with(1, "per project");
}

/// `openbox ARGS` run by `cli` in directory `cwd`, with `home` as its HOME.
fn skill_in(cli: &Cli, cwd: &Path, home: &Path, args: &[&str]) -> Out {
    Out::from(cli.cmd().current_dir(cwd).env("HOME", home).args(args).output().expect("run openbox"))
}

#[test]
fn all_global_writes_every_agent_with_a_user_wide_file_and_says_which_it_skipped() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let home = tempfile::tempdir().unwrap();
    let h = home.path();

    let out = skill_in(&admin, h, h, &["skill", "all", "--global"]).ok();
    let files = [".claude/skills/openbox/SKILL.md", ".codex/AGENTS.md", ".config/opencode/agents/openbox.md"];
    for f in files {
        assert!(out.stdout.contains(f), "{f} named: {out:?}");
        let text = std::fs::read_to_string(h.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains("openbox -t TAG"), "{f}: {text}");
    }
    assert!(!h.join(".cursor").exists() && !h.join(".github").exists(), "nothing written for cursor or copilot");
    assert!(out.stdout.contains("your home directory"), "{out:?}");
    let skipped = out.stdout.split_once("Skipped").map(|(_, s)| s).unwrap_or_else(|| panic!("no skip note: {out:?}"));
    assert!(skipped.contains("`openbox skill cursor copilot` in a project"), "{out:?}");
    for agent in ["cursor", "copilot"] {
        assert!(skipped.lines().any(|l| l.starts_with(agent) && l.contains("in its settings")), "{agent}: {out:?}");
    }

    // The same in JSON: what was written, and what was skipped and why.
    let json = skill_in(&admin, h, h, &["skill", "all", "--global", "--json"]).ok().json();
    let written: Vec<&str> = json["written"].as_array().unwrap().iter().map(|w| w["agent"].as_str().unwrap()).collect();
    assert_eq!(written, ["claude", "codex", "opencode"], "{json}");
    let skipped = json["skipped"].as_array().unwrap();
    assert_eq!(skipped.iter().map(|s| s["agent"].as_str().unwrap()).collect::<Vec<_>>(), ["cursor", "copilot"]);
    assert!(skipped.iter().all(|s| s["reason"].as_str().unwrap().contains("not in a file")), "{json}");

    // Named on its own it is an error, and nothing else named with it is written.
    let other = tempfile::tempdir().unwrap();
    let o = other.path();
    skill_in(&admin, o, o, &["skill", "copilot", "--global"])
        .fails_with(1, "write it per project (leave out --global)");
    skill_in(&admin, o, o, &["skill", "claude", "cursor", "--global"]).fails_with(1, "cursor keeps user-wide");
    assert!(std::fs::read_dir(o).unwrap().next().is_none(), "nothing written");
}

#[test]
fn project_files_land_at_the_root_of_the_git_work_tree() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let top = tempfile::tempdir().unwrap();
    let repo = top.path().join("repo");
    let sub = repo.join("crates/app");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::create_dir(repo.join(".git")).unwrap();

    let out = skill_in(&admin, &sub, top.path(), &["skill", "claude", "codex"]).ok();
    for f in [".claude/skills/openbox/SKILL.md", "AGENTS.md"] {
        assert!(repo.join(f).is_file(), "{f} at the root: {out:?}");
        assert!(!sub.join(f).exists(), "{f} not in the subdirectory");
    }
    assert!(out.stdout.contains("the root of the git work tree"), "the directory used is said: {out:?}");
    assert!(out.stdout.contains(&format!("{}/AGENTS.md", repo.display())), "{out:?}");
    let json = skill_in(&admin, &sub, top.path(), &["skill", "codex", "--json"]).ok().json();
    assert_eq!(json["dir"], repo.to_str().unwrap());

    // Outside a work tree: the current directory, as asked.
    let plain = top.path().join("plain/dir");
    std::fs::create_dir_all(&plain).unwrap();
    let out = skill_in(&admin, &plain, top.path(), &["skill", "codex"]).ok();
    assert!(plain.join("AGENTS.md").is_file() && !top.path().join("plain/AGENTS.md").exists(), "{out:?}");
    assert!(!out.stdout.contains("git work tree"), "{out:?}");
}

#[test]
fn the_text_teaches_where_commands_run_containers_files_and_long_work() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let dir = tempfile::tempdir().unwrap();
    let text = admin.run(&["skill", "claude", "--print", "--dir", dir.path().to_str().unwrap()]).ok().stdout;
    for habit in [
        // -t picks a node per call; multi-step work stays on one.
        "runs CMD on an online node carrying TAG, picked anew on every call",
        "stay on one node: `openbox -n NODE CMD…`, or a session",
        "Give the same `-t TAG` (or `-n NODE`) and `-s NAME` on every call",
        // A container session needs its isolation on every call.
        "call to it must repeat the same `--docker IMAGE`",
        // Files are copied, not piped through commands.
        "`openbox cp` copies files to and from a node",
        "use the file tools `read_file`, `write_file`, `edit_file`, `list_dir`, `stat`",
        // Long work is a background job, not a call a shell tool cuts short.
        "Many agents' shell tools stop a command after about 2 minutes",
        "belongs in a job, which runs on the node whether or not anyone is connected",
        "`openbox job wait --timeout 90s ID`",
        "Over MCP the same jobs: `start` it, then `read` its output",
    ] {
        assert!(text.contains(habit), "{habit:?} missing from:\n{text}");
    }
}
