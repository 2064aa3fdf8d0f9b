//! A headless Chromium driven over the DevTools protocol, for the dashboard's tests.

use crate::*;

/// Headless Chromium (Debian's), driven through `web/tests/browser.mjs` with playwright-core:
/// one JSON request per call. Every step waits for what it needs (up to 15 s); a step that
/// fails panics with the browser's own message.
pub struct Browser {
    child: Child,
    stdin: std::process::ChildStdin,
    answers: BufReader<std::process::ChildStdout>,
}

impl Browser {
    /// Starts a browser; the test fails (it does not skip) when node, the npm packages
    /// (`scripts/setup-test-env` installs them) or Chromium are missing.
    pub fn start() -> Browser {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/tests");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "web/tests/node_modules is missing: run scripts/setup-test-env (it runs `npm ci` there)"
        );
        let mut child = Command::new("node")
            .arg("browser.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js 20) runs the browser driver");
        let stdin = child.stdin.take().expect("piped");
        let answers = BufReader::new(child.stdout.take().expect("piped"));
        Browser { child, stdin, answers }
    }

    /// Runs one step: `op` with `args` (a JSON object); its answer, or its error message.
    pub fn try_call(&mut self, op: &str, args: serde_json::Value) -> Result<serde_json::Value, String> {
        let mut request = args;
        request["op"] = op.into();
        writeln!(self.stdin, "{request}").expect("the browser driver is running");
        let mut line = String::new();
        self.answers.read_line(&mut line).expect("an answer from the browser driver");
        assert!(!line.is_empty(), "the browser driver exited (see its output above)");
        let answer: serde_json::Value = serde_json::from_str(&line).expect("a JSON answer");
        match answer["ok"].as_bool() {
            Some(true) => Ok(answer["value"].clone()),
            _ => Err(answer["error"].as_str().unwrap_or("?").to_owned()),
        }
    }

    pub fn call(&mut self, op: &str, args: serde_json::Value) -> serde_json::Value {
        self.try_call(op, args.clone()).unwrap_or_else(|e| panic!("browser step {op} {args} failed: {e}"))
    }

    /// A new browser context (no cookies) with this window size and colour scheme.
    pub fn fresh(&mut self, width: u32, height: u32, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.call("fresh", serde_json::json!({"width": width, "height": height, "colorScheme": scheme}));
    }

    pub fn goto(&mut self, url: &str) {
        self.call("goto", serde_json::json!({ "url": url }));
    }

    pub fn fill(&mut self, selector: &str, value: &str) {
        self.call("fill", serde_json::json!({ "selector": selector, "value": value }));
    }

    pub fn click(&mut self, selector: &str) {
        self.call("click", serde_json::json!({ "selector": selector }));
    }

    pub fn select(&mut self, selector: &str, value: &str) {
        self.call("select", serde_json::json!({ "selector": selector, "value": value }));
    }

    pub fn wait(&mut self, selector: &str) {
        self.call("wait", serde_json::json!({ "selector": selector }));
    }

    pub fn press(&mut self, selector: &str, key: &str) {
        self.call("press", serde_json::json!({ "selector": selector, "key": key }));
    }

    pub fn wait_gone(&mut self, selector: &str) {
        self.call("wait", serde_json::json!({ "selector": selector, "state": "detached" }));
    }

    /// Waits until `selector`'s text contains `text`, and returns that text.
    pub fn wait_text(&mut self, selector: &str, text: &str) -> String {
        let v = self.call("waitText", serde_json::json!({ "selector": selector, "text": text }));
        v.as_str().unwrap_or_default().to_owned()
    }

    pub fn text(&mut self, selector: &str) -> String {
        self.call("text", serde_json::json!({ "selector": selector })).as_str().unwrap_or_default().to_owned()
    }

    pub fn count(&mut self, selector: &str) -> u64 {
        self.call("count", serde_json::json!({ "selector": selector })).as_u64().unwrap_or_default()
    }

    /// Evaluates a JavaScript expression in the page (a promise is awaited).
    pub fn eval(&mut self, js: &str) -> serde_json::Value {
        self.call("eval", serde_json::json!({ "js": js }))
    }

    pub fn cookies(&mut self) -> Vec<serde_json::Value> {
        self.call("cookies", serde_json::json!({})).as_array().cloned().unwrap_or_default()
    }

    /// Every URL the page has asked for since the last [`Browser::fresh`].
    pub fn requests(&mut self) -> Vec<String> {
        let v = self.call("requests", serde_json::json!({}));
        v.as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_owned)).collect()
    }

    pub fn screenshot(&mut self, path: &Path) {
        self.call("screenshot", serde_json::json!({ "path": path }));
    }

    /// Logs in through the login form with `token` and waits for the fleet page.
    pub fn log_in(&mut self, url: &str, token: &str) {
        self.goto(url);
        self.fill("#token", token);
        self.click("form button[type=submit]");
        self.wait("#counts");
    }
}

impl Drop for Browser {
    /// Ends the driver by closing its input, so that it closes the browser and removes its
    /// profile directory; kills it if it does not end within a few seconds.
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"quit\"}\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
