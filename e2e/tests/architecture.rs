//! The crate boundaries of docs/architecture.md, checked against `cargo metadata`: a new
//! dependency edge outside them fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// What each service (control plane, agent, openboxd) may use: the libraries, never
/// another service.
const SERVICE: &[&str] = &[
    "openbox-proto",
    "openbox-paths",
    "openbox-trust",
    "openbox-tls",
    "openbox-net",
    "openbox-telemetry",
    "openbox-tailnet",
    "openbox-service",
];

/// Each openbox crate and the openbox crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("openbox-proto", &[]),
    ("openbox-paths", &[]),
    ("openbox-service", &[]),
    ("openbox-trust", &["openbox-proto"]),
    ("openbox-tls", &[]),
    ("openbox-libtailscale-sys", &[]),
    ("openbox-tailnet", &["openbox-libtailscale-sys"]),
    ("openbox-telemetry", &[]),
    ("openbox-net", &["openbox-proto", "openbox-trust", "openbox-tls", "openbox-tailnet"]),
    ("openbox-control", SERVICE),
    ("openbox-agent", SERVICE),
    ("openboxd", SERVICE),
    ("openbox-cli", &["openbox-proto", "openbox-paths", "openbox-service"]),
    ("openbox-mcp", &["openbox-proto", "openbox-paths"]),
    ("openbox-e2e", &["openbox-proto", "openbox-paths", "openbox-trust", "openbox-tls", "openbox-net"]),
    // bench/loadgen: a client of the control plane's API, like an agent's heartbeats.
    ("openbox-loadgen", &["openbox-proto", "openbox-trust", "openbox-net"]),
];

/// Crates the CLI must not pull in, directly or through anything else: it has no async
/// runtime, no SSH and no HTTP, so that it starts in about a millisecond.
const NOT_IN_THE_CLI: &[&str] = &["tokio", "mio", "russh", "hyper", "axum", "rusqlite", "bollard", "rustls"];

struct Graph {
    /// Package id → name.
    names: BTreeMap<String, String>,
    /// Package id → ids of its normal (non-dev, non-build) dependencies.
    normal: BTreeMap<String, Vec<String>>,
    members: BTreeSet<String>,
}

/// The triple this machine builds for (the graph is resolved for it alone, so no crate of
/// another platform needs to be fetched).
fn host() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("a host line").to_owned()
}

fn graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let names = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p["name"].as_str().unwrap().to_owned()))
        .collect();
    let members =
        meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_owned()).collect();
    let normal = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
                .map(|d| d["pkg"].as_str().unwrap().to_owned())
                .collect();
            (node["id"].as_str().unwrap().to_owned(), deps)
        })
        .collect();
    Graph { names, normal, members }
}

impl Graph {
    fn id(&self, name: &str) -> &str {
        self.members.iter().find(|id| self.names[*id] == name).unwrap_or_else(|| panic!("no workspace crate {name}"))
    }
}

#[test]
fn openbox_crates_depend_only_on_the_crates_the_architecture_allows() {
    let g = graph();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for member in &g.members {
        let name = g.names[member].as_str();
        let Some(ok) = allowed.get(name) else {
            wrong.push(format!("{name} is a workspace crate the rules in this test do not know; add it"));
            continue;
        };
        for dep in &g.normal[member] {
            if g.members.contains(dep) && !ok.contains(&g.names[dep].as_str()) {
                wrong.push(format!("{name} depends on {}", g.names[dep]));
            }
        }
    }
    assert!(wrong.is_empty(), "edges outside docs/architecture.md's rules:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_cli_has_no_async_runtime_ssh_or_http_in_its_dependency_tree() {
    let g = graph();
    let mut seen = BTreeSet::new();
    let mut todo = vec![g.id("openbox-cli").to_owned()];
    while let Some(id) = todo.pop() {
        if seen.insert(id.clone()) {
            todo.extend(g.normal[&id].iter().cloned());
        }
    }
    let names: BTreeSet<&str> = seen.iter().map(|id| g.names[id].as_str()).collect();
    let found: Vec<&&str> = NOT_IN_THE_CLI.iter().filter(|n| names.contains(**n)).collect();
    assert!(found.is_empty(), "the CLI pulls in {found:?}");
    assert!(names.contains("clap") && names.contains("openbox-proto"), "the walk must see the CLI's real dependencies");
}
