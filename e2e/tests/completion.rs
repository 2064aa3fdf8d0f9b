//! Completion of the fleet's names — node names after -n, tags after -t, session ids after
//! -s, contexts after --context — in bash, zsh and fish, from what a running openboxd
//! knows (no call to the control plane; nothing, and no openboxd started, when none runs).

use std::path::{Path, PathBuf};
use std::process::Command;

use openbox_e2e::{Agent, Cli, ControlPlane, READY_TIMEOUT, bin, wait_until};

/// A fleet with node `box-one` tagged `gpu`, a session `build`, and openboxd knowing both.
fn fleet() -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll_with(&cp, &admin.enroll_token(&["gpu"]), &["--name", "box-one"]);
    admin.run(&["-t", "gpu", "-s", "build", "true"]).ok();
    wait_until("openboxd to know the node and the session", || {
        admin.run(&["__complete", "nodes"]).ok().stdout == "box-one\n"
            && admin.run(&["__complete", "sessions"]).ok().stdout == "build\n"
    });
    (cp, admin, agent)
}

/// A directory holding `openbox` (this build's), to put first on PATH, and the
/// completion script for `shell` written into it.
fn shell_dir(cli: &Cli, shell: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin("openbox"), dir.path().join("openbox")).unwrap();
    let script = cli.run(&["completions", shell]).ok().stdout;
    let name = if shell == "zsh" { "_openbox".to_owned() } else { format!("openbox.{shell}") };
    std::fs::write(dir.path().join(name), script).unwrap();
    dir
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[test]
fn names_come_from_the_running_openboxd_and_none_is_started_for_them() {
    let (_cp, admin, _agent) = fleet();
    assert_eq!(admin.run(&["__complete", "tags"]).ok().stdout, "gpu\n");
    assert_eq!(admin.run(&["__complete", "contexts"]).ok().stdout, "default\n");
    // With openboxd stopped, nothing is offered, and none is started to ask.
    admin.run(&["daemon", "stop"]).ok();
    let socket = admin.home.path().join("run/openboxd.sock");
    wait_until("openboxd to be gone", || !socket.exists());
    assert_eq!(admin.run(&["__complete", "nodes"]).ok().stdout, "");
    assert!(!socket.exists(), "no openboxd was started");
    // Nor where nobody has logged in.
    let nobody = Cli::new();
    assert_eq!(nobody.run(&["__complete", "nodes"]).ok().stdout, "");
}

#[test]
fn bash_and_fish_complete_nodes_tags_sessions_and_contexts() {
    let (_cp, admin, _agent) = fleet();
    let home = admin.home.path().display().to_string();

    let bash = shell_dir(&admin, "bash");
    let complete_bash = |line: &[&str]| -> String {
        let words = line.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(" ");
        let script = format!(
            "source {}/openbox.bash; COMP_WORDS=({words}); COMP_CWORD={}; _openbox openbox {:?} {:?}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.path().display(),
            line.len() - 1,
            line[line.len() - 1],
            line[line.len() - 2],
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &script])
            .env("PATH", path_with(bash.path()))
            .env("OPENBOX_HOME", &home)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(complete_bash(&["openbox", "-n", ""]), "box-one\n");
    assert_eq!(complete_bash(&["openbox", "-t", "g"]), "gpu\n");
    assert_eq!(complete_bash(&["openbox", "--session", ""]), "build\n");
    assert_eq!(complete_bash(&["openbox", "--context", "d"]), "default\n");
    assert_eq!(complete_bash(&["openbox", "cp", "-s", "b"]), "build\n");

    let fish = shell_dir(&admin, "fish");
    let complete_fish = |line: &str| -> String {
        let script = format!("source {}/openbox.fish; complete -C {line:?}", fish.path().display());
        let out = Command::new("fish")
            .args(["--no-config", "-c", &script])
            .env("PATH", path_with(fish.path()))
            .env("OPENBOX_HOME", &home)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(complete_fish("openbox -n "), "box-one");
    assert_eq!(complete_fish("openbox --tag g"), "gpu");
    assert_eq!(complete_fish("openbox -s "), "build");
    assert_eq!(complete_fish("openbox --context "), "default");
}

/// A tmux server of the test's own running zsh with no startup files.
struct Zsh {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Zsh {
    fn start(path: &str, home: &str) -> Zsh {
        let dir = tempfile::tempdir().unwrap();
        let zsh = Zsh { socket: dir.path().join("tmux.sock"), _dir: dir };
        // tmux gives a new window its client's PATH whatever -e says: env sets it.
        let command = format!("env PATH='{path}' OPENBOX_HOME='{home}' zsh -f");
        zsh.tmux(&["new-session", "-d", "-x", "120", "-y", "30", &command]);
        zsh
    }

    fn tmux(&self, args: &[&str]) {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn screen(&self) -> String {
        let out =
            Command::new("tmux").arg("-S").arg(&self.socket).args(["capture-pane", "-p", "-t", "0"]).output().unwrap();
        assert!(out.status.success(), "tmux capture-pane: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, text: &str, then: &str) {
        self.tmux(&["send-keys", "-t", "0", "-l", text]);
        self.tmux(&["send-keys", "-t", "0", then]);
    }

    #[track_caller]
    fn shows(&self, text: &str) {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while !self.screen().contains(text) {
            if std::time::Instant::now() > deadline {
                let out = Command::new("tmux")
                    .arg("-S")
                    .arg(&self.socket)
                    .args(["capture-pane", "-p", "-t", "0", "-S", "-100"])
                    .output()
                    .unwrap();
                panic!("zsh never showed {text:?}:\n{}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Zsh {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
    }
}

#[test]
fn zsh_completes_nodes_tags_and_sessions_as_they_are_typed() {
    let (_cp, admin, _agent) = fleet();
    let dir = shell_dir(&admin, "zsh");
    let zsh = Zsh::start(&path_with(dir.path()), &admin.home.path().display().to_string());
    zsh.keys(
        &format!("fpath=({} $fpath); autoload -U compinit; compinit -u; echo ready-$((6*7))", dir.path().display()),
        "Enter",
    );
    zsh.shows("ready-42");
    // Each completes to the only name there is, and the line shows it.
    zsh.keys("openbox -n b", "Tab");
    zsh.shows("openbox -n box-one");
    zsh.keys("", "C-u");
    zsh.keys("openbox -t g", "Tab");
    zsh.shows("openbox -t gpu");
    zsh.keys("", "C-u");
    zsh.keys("openbox -s bu", "Tab");
    zsh.shows("openbox -s build");
}
