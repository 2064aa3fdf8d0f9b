//! `openbox -i`: a command, or a login shell, in a terminal on the node — driven through a
//! real terminal (tmux): what is typed reaches the remote side (Ctrl-C too), the window
//! size follows the local one, the exit code comes back, and the local terminal is as it
//! was afterwards.

use std::path::PathBuf;
use std::process::Command;

use openbox_e2e::{Agent, Cli, ControlPlane, IsolatedFleet, wait_until};

/// A tmux server of the test's own, with one window running a plain shell whose
/// environment reaches `cli`'s openbox (typed as [`openbox`], a full path).
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn start(cli: &Cli, cols: u16, rows: u16) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux { socket: dir.path().join("tmux.sock"), _dir: dir };
        let home = format!("OPENBOX_HOME={}", cli.home.path().display());
        let (cols, rows) = (cols.to_string(), rows.to_string());
        tmux.run(&["new-session", "-d", "-x", &cols, "-y", &rows, "-e", &home, "bash --norc --noprofile"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` and presses Enter.
    fn line(&self, text: &str) {
        self.run(&["send-keys", "-t", "0", "-l", text]);
        self.run(&["send-keys", "-t", "0", "Enter"]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-t", "0", "-S", "-200"])
    }

    /// Waits until the screen shows `text` (computed output, never what was typed).
    #[track_caller]
    fn shows(&self, text: &str) {
        let deadline = std::time::Instant::now() + openbox_e2e::READY_TIMEOUT;
        let mut pause = std::time::Duration::from_millis(5);
        while !self.screen().contains(text) {
            assert!(std::time::Instant::now() < deadline, "the terminal never showed {text:?}:\n{}", self.screen());
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
    }

    /// The local terminal's settings, as `stty -g` prints them, read at the local prompt.
    /// What is typed just as a remote shell ends may be read by openbox on its way out, as
    /// with ssh: the question is asked again until an answer shows.
    fn local_settings(&self) -> String {
        for attempt in 0.. {
            let tag = format!("settings{attempt}=");
            self.line(&format!("echo {tag}$(stty -g)=$((6*7))"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::time::Instant::now() < deadline {
                let screen = self.screen();
                if let Some(l) = screen.lines().find(|l| l.starts_with(&tag) && l.ends_with("=42")) {
                    return l[tag.len()..l.len() - 3].to_owned();
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(attempt < 15, "the local prompt never answered:\n{}", self.screen());
        }
        unreachable!()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
    }
}

fn fleet() -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    (cp, admin, agent)
}

/// Checks a shell in a terminal through `openbox ARGS -i`, in a local window of 100×30:
/// the remote terminal has the window's size and follows it when it grows, Ctrl-C reaches
/// the remote command, the shell's exit code is openbox's, and the local terminal is
/// back as it was. `who` is what `id -un` says there.
fn check_shell_in_terminal(cli: &Cli, args: &[&str], who: &str) {
    let tmux = Tmux::start(cli, 100, 30);
    let before = tmux.local_settings();
    tmux.line(&format!("{} {} -i; echo local-exit-$?", openbox(), args.join(" ")));
    tmux.line("echo remote-$((40+2)) $(stty size) $(id -un)");
    tmux.shows(&format!("remote-42 30 100 {who}"));
    tmux.run(&["resize-window", "-t", "0", "-x", "120", "-y", "40"]);
    tmux.line("echo resized-$(stty size | tr ' ' x)");
    tmux.shows("resized-40x120");
    // One process that says it runs, then becomes sleep: a Ctrl-C sent once the marker
    // shows reaches it, before or after the exec.
    tmux.line("sh -c 'echo sleeping-$((1+1)); exec sleep 300'");
    tmux.shows("sleeping-2");
    tmux.run(&["send-keys", "-t", "0", "C-c"]);
    tmux.line("echo interrupted-$?");
    tmux.shows("interrupted-130");
    tmux.line("exit 3");
    tmux.shows("local-exit-3");
    assert_eq!(tmux.local_settings(), before);
}

#[test]
fn a_login_shell_follows_the_window_takes_ctrl_c_and_leaves_the_terminal_as_it_was() {
    let (_cp, admin, agent) = fleet();
    check_shell_in_terminal(&admin, &["-n", &agent.name], &whoami());
}

#[test]
fn a_shell_in_a_docker_container_has_a_terminal_too() {
    let f = IsolatedFleet::docker(&[]);
    check_shell_in_terminal(&f.cli, &["-t", "t", "--docker", &f.e.image], "root");
}

#[test]
fn a_shell_in_an_nspawn_container_has_a_terminal_too() {
    let f = IsolatedFleet::nspawn(&[]);
    check_shell_in_terminal(&f.cli, &["-t", "t", "--nspawn", &f.e.tree], "root");
}

#[test]
fn a_command_runs_in_a_terminal_and_its_exit_code_comes_back() {
    let (_cp, admin, agent) = fleet();
    let tmux = Tmux::start(&admin, 80, 24);
    let cmd = "'test -t 0 && test -t 1 && echo in-a-$((1+1))-terminal; exit 5'";
    tmux.line(&format!("{} -n {} -i {cmd}; echo exit-$?", openbox(), agent.name));
    tmux.shows("in-a-2-terminal");
    tmux.shows("exit-5");
}

#[test]
fn a_terminal_that_openbox_is_killed_in_is_given_back_sane() {
    let (_cp, admin, agent) = fleet();
    let tmux = Tmux::start(&admin, 80, 24);
    let before = tmux.local_settings();
    tmux.line(&format!("{} -n {} -i; echo local-exit-$?", openbox(), agent.name));
    tmux.line("echo remote-$((40+2))");
    tmux.shows("remote-42");
    // The CLI dies without a chance to clean up; openboxd, which set raw mode, restores it.
    let shell = tmux.run(&["display-message", "-p", "-t", "0", "#{pane_pid}"]).trim().to_owned();
    let cli = Command::new("pgrep").args(["-P", &shell, "-x", "openbox"]).output().unwrap();
    let pid = String::from_utf8_lossy(&cli.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "the openbox process in the terminal");
    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    tmux.shows("local-exit-137");
    wait_until("openboxd to restore the terminal", || tmux.local_settings() == before);
}

#[test]
fn a_terminal_is_refused_without_one() {
    let (_cp, admin, agent) = fleet();
    let out = admin.run(&["-n", &agent.name, "-i", "true"]);
    out.fails_with(2, "stdin must be one");
}

/// The openbox binary under test.
fn openbox() -> String {
    openbox_e2e::bin("openbox").display().to_string()
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Checks a terminal in a session's container (`-s box -i`): it sees what the session's
/// commands left there, follows the window, and the session lives on after it.
fn check_terminal_in_a_session(f: &IsolatedFleet, mode: &[&str]) {
    let mut args: Vec<&str> = vec!["-t", "t"];
    args.extend(mode);
    args.extend(["-s", "box"]);
    let with = |cmd: &'static str| [&args[..], &[cmd]].concat();
    f.cli.run(&with("echo state > /tmp/file")).ok();
    let tmux = Tmux::start(&f.cli, 100, 30);
    tmux.line(&format!("{} {} -i; echo local-exit-$?", openbox(), args.join(" ")));
    tmux.line("echo seen-$(cat /tmp/file)-$(stty size | tr ' ' x)");
    tmux.shows("seen-state-30x100");
    tmux.run(&["resize-window", "-t", "0", "-x", "120", "-y", "40"]);
    tmux.line("echo resized-$(stty size | tr ' ' x)");
    tmux.shows("resized-40x120");
    tmux.line("echo more >> /tmp/file; exit 3");
    tmux.shows("local-exit-3");
    assert_eq!(f.cli.run(&with("cat /tmp/file")).ok().stdout, "state\nmore\n");
}

#[test]
fn a_terminal_opens_in_a_docker_sessions_container() {
    let f = IsolatedFleet::docker(&[]);
    check_terminal_in_a_session(&f, &["--docker", &f.e.image]);
}

#[test]
fn a_terminal_opens_in_an_nspawn_sessions_container() {
    let f = IsolatedFleet::nspawn(&[]);
    check_terminal_in_a_session(&f, &["--nspawn", &f.e.tree]);
}

#[test]
fn a_native_session_has_no_container_to_open_a_terminal_in() {
    let (_cp, admin, agent) = fleet();
    let tmux = Tmux::start(&admin, 80, 24);
    tmux.line(&format!("{} -n {} -s s1 -i; echo local-exit-$?", openbox(), agent.name));
    tmux.shows("no container to open a terminal in");
    tmux.shows("local-exit-255");
}

#[test]
fn ctrl_z_stops_the_remote_job_not_openbox() {
    let (_cp, admin, agent) = fleet();
    let tmux = Tmux::start(&admin, 100, 30);
    tmux.line(&format!("{} -n {} -i; echo local-exit-$?", openbox(), agent.name));
    tmux.line("echo suspending-$((2+2)); sleep 300");
    tmux.shows("suspending-4");
    tmux.run(&["send-keys", "-t", "0", "C-z"]);
    // The remote shell stopped its job (128 + SIGTSTP) and still answers.
    tmux.line("echo suspended-$?; kill -9 %1; disown -a; exit 0");
    tmux.shows("suspended-148");
    tmux.shows("local-exit-0");
}

#[test]
fn login_asks_for_the_token_on_a_terminal_and_never_shows_it() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.new_user_token("tess");
    let tess = Cli::new();
    let tmux = Tmux::start(&tess, 120, 30);
    tmux.line(&format!("{} login --server {}", openbox(), cp.url));
    tmux.shows("Login token (not shown as you type):");
    tmux.line(&token);
    tmux.shows("Logged in to");
    assert!(!tmux.screen().contains(&token), "the token was shown:\n{}", tmux.screen());
    assert_eq!(tess.run(&["whoami", "--json"]).ok().json()["user"], "tess");
}

#[test]
fn a_control_plane_first_started_on_a_terminal_shows_the_token_apart_from_a_login_command_that_works() {
    let home = Cli::new(); // the control plane's home
    let tmux = Tmux::start(&home, 160, 30);
    tmux.line(&format!("{} --addr 127.0.0.1:0", openbox_e2e::bin("openbox-control").display()));
    tmux.shows("Log in with this, which asks for the token");
    let screen = tmux.screen();
    let token = screen.lines().map(str::trim).find(|l| l.starts_with("obx_")).expect("the token on a line of its own");
    let command = screen.lines().map(str::trim).find(|l| l.starts_with("openbox login")).expect("a login command");
    assert!(!command.contains("obx_") && !command.contains("--token"), "{command}");
    let admin = Cli::with_env(&[("OPENBOX_LOGIN_TOKEN", token)]);
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    admin.run(&words).ok();
    assert_eq!(admin.run(&["whoami", "--json"]).ok().json()["user"], "admin");
    // Stopped as in a terminal (a service ignores the hangup of closing it).
    tmux.run(&["send-keys", "-t", "0", "C-c"]);
    tmux.line("echo stopped-$((40+2))");
    tmux.shows("stopped-42");
}
