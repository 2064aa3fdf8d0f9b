//! `openbox skill`: openbox's instructions in each AI coding agent's own place and format.

use openbox_e2e::{Agent, Cli, ControlPlane};

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
