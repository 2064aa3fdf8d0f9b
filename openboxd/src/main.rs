//! `openboxd`: runs the call the `openbox` CLI handed over in `OPENBOX_CALL`.

use std::io::Write;
use std::process::ExitCode;

use proto::request::{CALL_ENV, Call};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENBOX_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let Some(text) = std::env::var_os(CALL_ENV) else {
        eprintln!("openboxd: nothing to do; it is started by the `openbox` command");
        return ExitCode::from(2);
    };
    let call: Call = match serde_json::from_str(&text.to_string_lossy()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "openboxd: the request from the CLI is not understood ({e}); are openbox and openboxd the same version?"
            );
            return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = rt.block_on(openboxd::handle(call));
    let _ = std::io::stdout().flush();
    // Exit without waiting for a blocked read of stdin (the runtime would wait for it).
    std::process::exit(i32::from(code));
}
