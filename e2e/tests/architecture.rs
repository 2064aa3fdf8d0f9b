//! The crate boundaries of docs/architecture.md, checked against `cargo metadata`: a new
//! dependency edge outside them fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
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

/// Beyond those, the agent follows the processes its commands start, on Linux and macOS,
/// and openboxd's `up` names the process that holds the port it wants.
const PROCINFO_USERS: &[&str] = &["openbox-agent", "openboxd"];

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
    ("openbox-procinfo", &[]),
    ("openbox-net", &["openbox-proto", "openbox-trust", "openbox-tls", "openbox-tailnet"]),
    ("openbox-control", SERVICE),
    ("openbox-agent", SERVICE),
    ("openboxd", SERVICE),
    ("openbox-cli", &["openbox-proto", "openbox-paths", "openbox-service"]),
    ("openbox-mcp", &["openbox-proto", "openbox-paths"]),
    ("openbox-e2e", &["openbox-proto", "openbox-paths", "openbox-trust", "openbox-tls", "openbox-net"]),
    // bench/loadgen: a client of the control plane's API, like an agent's heartbeats (over
    // HTTPS, with the control plane's key pinned).
    ("openbox-loadgen", &["openbox-proto", "openbox-trust", "openbox-net", "openbox-tls", "openbox-procinfo"]),
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
            let dep_name = g.names[dep].as_str();
            let also = PROCINFO_USERS.contains(&name) && dep_name == "openbox-procinfo";
            if g.members.contains(dep) && !ok.contains(&dep_name) && !also {
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

/// The top-level modules of a crate (`src/foo.rs` and `src/foo/…` are `foo`) and, for each,
/// the modules it names (`crate::bar`, `use crate::{bar, baz}`), with the first place it
/// does. Comments and a file's trailing `#[cfg(test)]` module are left out: a doc link or
/// a test's helper is not a dependency.
fn module_edges(src: &std::path::Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if ["lib", "main"].contains(&top.as_str()) || rel.starts_with("bin") {
            continue; // the crate's root names everything
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap();
            for named in crate_paths(line) {
                if named != top {
                    let at = format!("{}:{}", path.display(), n + 1);
                    edges.entry(top.clone()).or_default().entry(named).or_insert(at);
                }
            }
        }
        edges.entry(top).or_default();
    }
    edges
}

/// The first segment of every `crate::…` path in `line`, braces included
/// (`crate::{a, b::c}` names `a` and `b`).
fn crate_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut found = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.push(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.into_iter().filter(|s| !s.is_empty()).collect()
}

/// The sets of modules that name each other round a loop (Tarjan's strongly connected
/// components of more than one module).
fn module_loops(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        loops: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, m: &'a str) {
            let i = self.index.len();
            self.index.insert(m, i);
            self.low.insert(m, i);
            self.stack.push(m);
            for next in self.edges.get(m).into_iter().flat_map(|e| e.keys()) {
                let next = next.as_str();
                if !self.edges.contains_key(next) {
                    continue; // not a module of this crate (a macro's crate::, say)
                }
                if !self.index.contains_key(next) {
                    self.visit(next);
                    self.low.insert(m, self.low[m].min(self.low[next]));
                } else if self.stack.contains(&next) {
                    self.low.insert(m, self.low[m].min(self.index[next]));
                }
            }
            if self.low[m] == self.index[m] {
                let mut group = Vec::new();
                while let Some(top) = self.stack.pop() {
                    group.push(top.to_owned());
                    if top == m {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.loops.push(group);
                }
            }
        }
    }
    let mut walk = Walk { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), loops: Vec::new() };
    for m in edges.keys() {
        if !walk.index.contains_key(m.as_str()) {
            walk.visit(m);
        }
    }
    walk.loops
}

#[test]
fn no_crate_has_modules_that_use_each_other_round_a_loop() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let g = graph();
    let mut found = Vec::new();
    for member in &g.members {
        let dir = member.split('#').next().unwrap().trim_start_matches("path+file://");
        let src = std::path::Path::new(dir).join("src");
        if !src.is_dir() {
            continue;
        }
        let edges = module_edges(&src);
        for group in module_loops(&edges) {
            let how: Vec<String> = group
                .iter()
                .flat_map(|m| {
                    edges[m]
                        .iter()
                        .filter(|(to, _)| group.contains(to))
                        .map(move |(to, at)| format!("{m} → {to} ({at})"))
                })
                .collect();
            found.push(format!("{}: {}\n      {}", g.names[member], group.join(", "), how.join("\n      ")));
        }
    }
    let _ = root;
    assert!(found.is_empty(), "modules that use each other round a loop:\n  {}", found.join("\n  "));
}

#[test]
fn the_loop_finder_finds_a_loop_and_reads_braced_paths() {
    assert_eq!(crate_paths("use crate::{a, b::{c, d}, e::f};"), ["a", "b", "e"]);
    assert_eq!(crate_paths("let x = crate::plan::plan(&g); crate::y"), ["plan", "y"]);
    let edges: BTreeMap<String, BTreeMap<String, String>> =
        [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]
            .iter()
            .map(|(m, to)| (m.to_string(), to.iter().map(|t| (t.to_string(), String::new())).collect()))
            .collect();
    assert_eq!(module_loops(&edges), vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
}

#[test]
fn the_fuzz_targets_lock_file_holds_every_crate_they_build_with() {
    // A crate the workspace gained and fuzz/Cargo.lock lacks would be resolved afresh on
    // each fuzz run; `--locked` refuses that here first.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(&fuzz)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "fuzz/Cargo.lock is not up to date (run `cargo metadata` in fuzz/ and commit the lock file): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
