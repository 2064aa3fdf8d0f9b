//! One command in a session's shell, framed: the command is sent as a function call
//! followed by two marker lines holding a fresh random nonce — on stdout with the exit
//! status, and on stderr — so output streams live, the status is exact, and output that
//! imitates a marker cannot end a command early (it cannot know the nonce).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::shell::Shell;
use crate::channel::{Messages, Out};

fn nonce() -> String {
    trust::token::random_id()
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// What the shell is sent to run `command`, framed by markers carrying `nonce`.
///
/// The command runs in a function of the session's own shell, so `cd` and `export`
/// stay. `command eval` keeps the shell alive through a syntax error; stdin is `stdin`
/// (the command's own FIFO, else /dev/null), never the shell's, so a command cannot
/// swallow the lines that follow it. SIGUSR1 makes the
/// function return, which stops what is left of the command — even a loop of builtins
/// — without losing the shell. That trap is armed and disarmed inside the function:
/// outside it, `return` would end the shell, so there USR1 does nothing (`:`).
fn script(command: &str, nonce: &str, stdin: &str) -> String {
    let n = nonce;
    format!(
        "trap : USR1\n__openbox_run() {{ trap 'return 124' USR1; command eval {} <{}\n__obx=$?; trap : USR1; return $__obx\n}}\n__openbox_run; __obx=$?\nprintf 'OBX:{n}:%d\\n' \"$__obx\"\nprintf 'OBX:{n}\\n' >&2\n",
        quote(command),
        quote(stdin)
    )
}

/// Finds `marker` in a byte stream fed in pieces, holding back bytes that might be the
/// start of it.
pub struct Scanner {
    marker: Vec<u8>,
    held: Vec<u8>,
}

impl Scanner {
    pub fn new(marker: String) -> Scanner {
        Scanner { marker: marker.into_bytes(), held: Vec::new() }
    }

    /// Returns the bytes that are certainly output, and what follows the marker if it was
    /// found.
    pub fn feed(&mut self, data: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        self.held.extend_from_slice(data);
        if let Some(pos) = self.held.windows(self.marker.len()).position(|w| w == self.marker.as_slice()) {
            let after = self.held.split_off(pos + self.marker.len());
            self.held.truncate(pos);
            return (std::mem::take(&mut self.held), Some(after));
        }
        // Keep the longest tail that is a prefix of the marker.
        let keep = (1..self.marker.len().min(self.held.len() + 1))
            .rev()
            .find(|&n| self.held.ends_with(&self.marker[..n]))
            .unwrap_or(0);
        let emit = self.held.drain(..self.held.len() - keep).collect();
        (emit, None)
    }
}

/// The end of one command in the shell's two output streams: the status marker on
/// stdout, the marker on stderr. Fed the streams as they come, it returns what is the
/// command's own output.
struct Frame {
    out_scan: Scanner,
    err_scan: Scanner,
    /// What followed the stdout marker, until its line ends.
    status_text: Option<Vec<u8>>,
    code: Option<u32>,
    err_done: bool,
}

impl Frame {
    fn new(nonce: &str) -> Frame {
        Frame {
            out_scan: Scanner::new(format!("OBX:{nonce}:")),
            err_scan: Scanner::new(format!("OBX:{nonce}\n")),
            status_text: None,
            code: None,
            err_done: false,
        }
    }

    /// Takes bytes from the shell's stdout; returns those that are the command's output.
    fn stdout(&mut self, data: &[u8]) -> Vec<u8> {
        let mut emit = Vec::new();
        if let Some(text) = self.status_text.as_mut() {
            text.extend_from_slice(data);
        } else {
            let after;
            (emit, after) = self.out_scan.feed(data);
            self.status_text = after;
        }
        if let Some(text) = &self.status_text
            && let Some(end) = text.iter().position(|b| *b == b'\n')
        {
            self.code = std::str::from_utf8(&text[..end]).ok().and_then(|t| t.parse().ok()).or(Some(255));
        }
        emit
    }

    /// Takes bytes from the shell's stderr; returns those that are the command's output.
    fn stderr(&mut self, data: &[u8]) -> Vec<u8> {
        let (emit, after) = self.err_scan.feed(data);
        self.err_done = after.is_some();
        emit
    }

    /// The command's exit status, once its marker line has come.
    fn code(&self) -> Option<u32> {
        self.code
    }

    /// Whether the stderr marker has come.
    fn stderr_done(&self) -> bool {
        self.err_done
    }
}

/// How a framed command ended.
pub enum Framed {
    Done(u32),
    TimedOut(Duration),
    /// No end markers came after an interrupt (the timeout, if that was why).
    Unresponsive(Option<Duration>),
    ShellEnded,
}

/// Sends one command to the shell and streams its output until both markers arrive.
pub async fn run_framed(
    shell: &mut Shell,
    command: &str,
    timeout: Option<Duration>,
    out: &impl Out,
    input: &mut Messages,
) -> Framed {
    let n = nonce();
    // The command's own stdin. Where none can be made (an engine on another host), it
    // reads nothing, and input that comes anyway stops it: never success with input lost.
    let fifo =
        shell.host.root_pid().ok_or_else(|| "the shell is not on this host".to_owned()).and_then(|pid| {
            super::stdin::Fifo::make(pid).map_err(|e| format!("its stdin pipe could not be made: {e}"))
        });
    let stdin_path = fifo.as_ref().map_or("/dev/null", |f| f.path_in_shell.as_str()).to_owned();
    let mut stdin = fifo.as_ref().ok().map(|f| f.feed(input.window.clone()));
    if shell.stdin.write_all(script(command, &n, &stdin_path).as_bytes()).await.is_err() {
        return Framed::ShellEnded;
    }
    let mut input_lost = false;
    let mut frame = Frame::new(&n);
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = None;
    let mut caller_gone = false;
    // After an interrupt the markers must come soon; a shell that sends none (its output
    // redirected away by `exec >…`, say) is given up on.
    let mut give_up_at = None;
    let grace = Duration::from_secs(5);
    while frame.code().is_none() || !frame.stderr_done() {
        tokio::select! {
            _ = async { tokio::time::sleep_until(give_up_at.expect("guarded")).await }, if give_up_at.is_some() => {
                return Framed::Unresponsive(timed_out);
            },
            r = shell.stdout.read(&mut out_buf), if frame.code().is_none() => match r {
                Ok(0) | Err(_) => return Framed::ShellEnded,
                Ok(k) => {
                    let emit = frame.stdout(&out_buf[..k]);
                    if !emit.is_empty() && !caller_gone {
                        out.stdout(&emit).await;
                    }
                }
            },
            r = shell.stderr.read(&mut err_buf), if !frame.stderr_done() => match r {
                Ok(0) | Err(_) => return Framed::ShellEnded,
                Ok(k) => {
                    let emit = frame.stderr(&err_buf[..k]);
                    if !emit.is_empty() && !caller_gone {
                        out.stderr(&emit).await;
                    }
                }
            },
            msg = input.recv(), if !caller_gone => match msg {
                Some(russh::ChannelMsg::Close) | None => {
                    // Nobody waits for this command any more: stop it, keep the shell.
                    caller_gone = true;
                    shell.host.interrupt().await;
                    give_up_at.get_or_insert(tokio::time::Instant::now() + grace);
                }
                Some(russh::ChannelMsg::Signal { signal }) => {
                    if let Some(sig) = crate::signals::to_signal(&signal) {
                        shell.host.signal(sig).await;
                    }
                }
                Some(russh::ChannelMsg::Data { data }) => match (&stdin, &fifo) {
                    (Some(tx), _) => if let Err(lost) = tx.send(data) {
                        input.window.used(lost.0.len());
                        stdin = None;
                    },
                    (None, Err(why)) if !data.is_empty() && !input_lost => {
                        input.window.used(data.len());
                        input_lost = true;
                        out.stderr(format!("openbox: input cannot reach this session's shell ({why}); the command was stopped\n").as_bytes()).await;
                        shell.host.interrupt().await;
                        give_up_at.get_or_insert(tokio::time::Instant::now() + grace);
                    }
                    // Past the end of input, or after the command stopped reading.
                    _ => input.window.used(data.len()),
                },
                Some(russh::ChannelMsg::ExtendedData { data, .. }) => input.window.used(data.len()),
                Some(russh::ChannelMsg::Eof) => stdin = None,
                Some(_) => {}
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && timed_out.is_none() => {
                timed_out = timeout;
                shell.host.interrupt().await;
                give_up_at.get_or_insert(tokio::time::Instant::now() + grace);
            },
        }
    }
    match timed_out {
        Some(after) => Framed::TimedOut(after),
        None if input_lost => Framed::Done(255),
        None => Framed::Done(frame.code().expect("loop ends with a code")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn the_scanner_finds_a_marker_split_across_reads_and_holds_back_only_a_possible_prefix() {
        let mut s = Scanner::new("OBX:ab:".into());
        assert_eq!(s.feed(b"hello OB"), (b"hello ".to_vec(), None));
        assert_eq!(s.feed(b"X:a"), (Vec::new(), None));
        assert_eq!(s.feed(b"b:0\n"), (Vec::new(), Some(b"0\n".to_vec())));
        let mut s = Scanner::new("OBX:ab:".into());
        assert_eq!(s.feed(b"OBX:zz:1\nmore"), (b"OBX:zz:1\nmore".to_vec(), None));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("echo 'a'"), r"'echo '\''a'\'''");
    }

    #[test]
    fn a_frame_ends_at_both_markers_and_reads_the_status_split_across_reads() {
        let mut f = Frame::new("ab");
        assert_eq!(f.stdout(b"out\nOBX:ab:4"), b"out\n");
        assert_eq!(f.code(), None);
        assert_eq!(f.stdout(b"2\n"), b"");
        assert_eq!(f.code(), Some(42));
        assert!(!f.stderr_done());
        assert_eq!(f.stderr(b"err\nOBX:a"), b"err\n");
        assert!(!f.stderr_done());
        assert_eq!(f.stderr(b"b\n"), b"");
        assert!(f.stderr_done());
    }

    #[test]
    fn output_imitating_a_marker_with_another_nonce_is_output() {
        let mut f = Frame::new("ab");
        assert_eq!(f.stdout(b"OBX:zz:0\n"), b"OBX:zz:0\n");
        assert_eq!(f.stderr(b"OBX:zz\n"), b"OBX:zz\n");
        assert_eq!((f.code(), f.stderr_done()), (None, false));
    }

    #[test]
    fn an_unreadable_status_reads_as_255() {
        let mut f = Frame::new("ab");
        f.stdout(b"OBX:ab:x\n");
        assert_eq!(f.code(), Some(255));
    }

    /// Runs `commands` one after another in one real `/bin/sh`, each framed as a session
    /// sends it, and reads back each one's stdout, stderr and status through a frame.
    fn through_sh(commands: &[&str]) -> Vec<(String, String, Option<u32>)> {
        let nonces: Vec<String> = commands.iter().map(|_| nonce()).collect();
        let mut sh = Command::new("/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("/bin/sh");
        let mut stdin = sh.stdin.take().expect("piped");
        for (command, n) in commands.iter().zip(&nonces) {
            stdin.write_all(script(command, n, "/dev/null").as_bytes()).expect("write");
        }
        drop(stdin);
        let output = sh.wait_with_output().expect("sh");
        let (mut stdout, mut stderr) = (&output.stdout[..], &output.stderr[..]);
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
        let mut results = Vec::new();
        for n in &nonces {
            let mut f = Frame::new(n);
            let (out, err) = (f.stdout(stdout), f.stderr(stderr));
            results.push((text(out), text(err), f.code()));
            // What follows this command's markers is the next one's.
            stdout = after(stdout, &format!("OBX:{n}:")).and_then(|rest| after(rest, "\n")).unwrap_or_default();
            stderr = after(stderr, &format!("OBX:{n}\n")).unwrap_or_default();
        }
        results
    }

    fn after<'a>(data: &'a [u8], marker: &str) -> Option<&'a [u8]> {
        let marker = marker.as_bytes();
        data.windows(marker.len()).position(|w| w == marker).map(|p| &data[p + marker.len()..])
    }

    #[test]
    fn the_script_runs_each_command_in_the_same_shell_and_reports_its_status() {
        let results = through_sh(&["cd /tmp && X=kept; echo out; echo err >&2; false", "pwd; echo $X; exit 3"]);
        assert_eq!(results[0], ("out\n".into(), "err\n".into(), Some(1)));
        // `exit` in a command ends the shell: no markers come for it.
        assert_eq!(results[1], ("/tmp\nkept\n".into(), String::new(), None));
    }

    #[test]
    fn a_syntax_error_ends_the_command_not_the_shell() {
        let results = through_sh(&["if", "echo still here"]);
        assert_ne!(results[0].2, Some(0));
        assert_eq!(results[1], ("still here\n".into(), String::new(), Some(0)));
    }
}
