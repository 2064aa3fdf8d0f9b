//! The test harness: start the real `openbox`, `openbox-control` and `openbox-agent`
//! binaries on 127.0.0.1 with temporary `OPENBOX_HOME`s, and wait on their readiness lines.
//!
//! The binaries come from the same target directory as the test executable; build them
//! first (`cargo build --workspace`, which the test command does).

// What every module of the harness uses (each takes `use crate::*`).
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

mod agent;
mod browser;
mod cli;
mod control_plane;
mod engines;
mod http;
mod mesh;
mod network;
mod postgres;
mod process;

pub use agent::*;
pub use browser::*;
pub use cli::*;
pub use control_plane::*;
pub use engines::*;
pub use http::*;
pub use mesh::*;
pub use network::*;
pub use postgres::*;
pub use process::*;
pub(crate) use process::{Proc, kill, signal, stop};
