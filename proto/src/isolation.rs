//! The isolation a command runs under. Parsed strictly: anything unknown is an error, never
//! a silent fall back to the host.
//!
//! Text form (what `--isolate` takes and what the user certificate carries):
//! `native`, `docker:IMAGE` or `nspawn:DIR`, then options as `;name=value`:
//! `docker:debian:12;cpus=1.5;memory=536870912;network=none;mount=/src:/dst:ro`.
//! [`Isolation`]'s `Display` writes the one canonical spelling, so a value signed by the
//! control plane reads back exactly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Invalid;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// A shell on the node itself.
    #[default]
    Native,
    /// A container from this image on the node's Docker-API engine.
    Docker { image: String, limits: Limits },
    /// A systemd-nspawn container over this root directory on the node.
    Nspawn { dir: String, limits: Limits },
}

/// Resource options for a container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// CPUs in thousandths (1500 = 1.5 CPUs). Docker only.
    pub millicpus: Option<u64>,
    /// Memory limit in bytes. Docker only.
    pub memory: Option<u64>,
    pub network: Option<Network>,
    /// Host directories mounted into the container.
    pub mounts: Vec<Mount>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// No network but loopback.
    None,
    /// The node's own network.
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mount {
    pub src: String,
    pub dst: String,
    pub read_only: bool,
}

/// The isolation kinds a node can offer, as nodes report them.
pub const KINDS: [&str; 3] = ["native", "docker", "nspawn"];

/// Whether `kind` is one of [`KINDS`] (as a grant names them), or why not.
pub fn check_kind(kind: &str) -> Result<(), crate::Invalid> {
    if KINDS.contains(&kind) {
        return Ok(());
    }
    Err(crate::Invalid::Isolation(format!("{kind:?} is not an isolation kind; use one of {}", KINDS.join(", "))))
}

impl Isolation {
    /// `native`, `docker` or `nspawn`: what a node must be able to serve.
    pub fn kind(&self) -> &'static str {
        match self {
            Isolation::Native => "native",
            Isolation::Docker { .. } => "docker",
            Isolation::Nspawn { .. } => "nspawn",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::None => "none",
            Network::Host => "host",
        })
    }
}

impl FromStr for Network {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => Err(Invalid::Isolation(format!("network {s:?}: expected none or host"))),
        }
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.src, self.dst)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

fn check_path(what: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{what} {p:?} must be an absolute path"));
    }
    if p.chars().any(|c| c.is_control() || matches!(c, ':' | ';' | ',')) {
        return Err(format!("{what} {p:?} must not contain ':', ';', ',' or control characters"));
    }
    // One spelling per path: no `..`, `.`, `//` or trailing `/` (so `nspawn:/.` is `/`).
    if p != "/" && p.split('/').skip(1).any(|part| matches!(part, "" | "." | "..")) {
        return Err(format!("{what} {p:?} must be a plain path, without '.', '..', '//' or a trailing '/'"));
    }
    Ok(())
}

impl FromStr for Mount {
    type Err = Invalid;
    /// `SRC:DST` or `SRC:DST:ro` (or `:rw`), both absolute.
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, read_only) = match parts[..] {
            [src, dst] => (src, dst, false),
            [src, dst, "ro"] => (src, dst, true),
            [src, dst, "rw"] => (src, dst, false),
            _ => return Err(Invalid::Isolation(format!("mount {s:?}: expected SRC:DST or SRC:DST:ro"))),
        };
        check_path("mount source", src).map_err(Invalid::Isolation)?;
        check_path("mount target", dst).map_err(Invalid::Isolation)?;
        Ok(Mount { src: src.to_owned(), dst: dst.to_owned(), read_only })
    }
}

/// Parses a CPU count such as `2` or `1.5` into thousandths.
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let bad = || format!("cpus {s:?}: expected a number of CPUs such as 2 or 0.5");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 3
        || !(whole.chars().chain(frac.chars())).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<3}").parse().map_err(|_| bad())? };
    let milli = whole.checked_mul(1000).and_then(|w| w.checked_add(frac)).ok_or_else(bad)?;
    if milli == 0 || milli > 1_000_000 {
        return Err(format!("cpus {s:?}: must be more than 0 and at most 1000"));
    }
    Ok(milli)
}

/// Parses a memory limit such as `512m`, `2g` or `1048576` (bytes) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s).map_err(|_| format!("memory {s:?}: expected a size such as 512m or 2g"))?;
    if bytes < 4 << 20 {
        return Err(format!("memory {s:?}: must be at least 4m"));
    }
    Ok(bytes)
}

/// Parses a size such as `64k`, `1m`, `2g` or `4096` (bytes; binary multiples, an
/// optional trailing `b`) into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?}: expected a size such as 64k, 1m or 4096");
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    fn parse(opts: &[&str]) -> Result<Limits, String> {
        let mut l = Limits::default();
        for opt in opts {
            let (name, value) = opt.split_once('=').ok_or_else(|| format!("option {opt:?}: expected name=value"))?;
            let dup = |set: bool| if set { Err(format!("option {name:?} given twice")) } else { Ok(()) };
            match name {
                "cpus" => {
                    dup(l.millicpus.is_some())?;
                    l.millicpus = Some(parse_cpus(value)?);
                }
                "memory" => {
                    dup(l.memory.is_some())?;
                    l.memory = Some(parse_size(value)?);
                }
                "network" => {
                    dup(l.network.is_some())?;
                    l.network = Some(value.parse().map_err(|e: Invalid| e.to_string())?);
                }
                "mount" => l.mounts.push(value.parse().map_err(|e: Invalid| e.to_string())?),
                _ => return Err(format!("unknown option {name:?}; known: cpus, memory, network, mount")),
            }
        }
        Ok(l)
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = self.millicpus {
            match m % 1000 {
                0 => write!(f, ";cpus={}", m / 1000)?,
                r => write!(f, ";cpus={}.{}", m / 1000, format!("{r:03}").trim_end_matches('0'))?,
            }
        }
        if let Some(b) = self.memory {
            write!(f, ";memory={b}")?;
        }
        if let Some(n) = self.network {
            write!(f, ";network={n}")?;
        }
        for m in &self.mounts {
            write!(f, ";mount={m}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Native => f.write_str("native"),
            Isolation::Docker { image, limits } => write!(f, "docker:{image}{limits}"),
            Isolation::Nspawn { dir, limits } => write!(f, "nspawn:{dir}{limits}"),
        }
    }
}

impl FromStr for Isolation {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| Err(Invalid::Isolation(format!("invalid isolation {s:?}: {why}")));
        let mut parts = s.split(';');
        let mode = parts.next().unwrap_or_default();
        let opts: Vec<&str> = parts.collect();
        let limits = match Limits::parse(&opts) {
            Ok(l) => l,
            Err(why) => return bad(&why),
        };
        if mode == "native" {
            if !limits.is_empty() {
                return bad(
                    "native runs on the host and takes no options; --cpus, --memory, --network and --mount need --docker or --nspawn",
                );
            }
            return Ok(Isolation::Native);
        }
        if let Some(image) = mode.strip_prefix("docker:") {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '@');
            if image.is_empty() || !image.chars().all(ok) || image.starts_with(['-', '/', ':']) {
                return bad("docker needs an image reference such as debian:12 or registry.example/team/img:tag");
            }
            return Ok(Isolation::Docker { image: image.to_owned(), limits });
        }
        if let Some(dir) = mode.strip_prefix("nspawn:") {
            if let Err(why) = check_path("nspawn directory", dir) {
                return bad(&format!("{why}, as in nspawn:/var/lib/machines/deb"));
            }
            if dir == "/" {
                return bad("nspawn needs a root tree other than the host's own /");
            }
            if limits.millicpus.is_some() || limits.memory.is_some() {
                return bad(
                    "cpus and memory limits need --docker (nspawn here runs without a service manager to enforce them)",
                );
            }
            return Ok(Isolation::Nspawn { dir: dir.to_owned(), limits });
        }
        bad("expected native, docker:IMAGE or nspawn:DIR")
    }
}

impl Serialize for Isolation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Isolation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_modes_and_round_trips() {
        for s in [
            "native",
            "docker:debian:12",
            "docker:registry.example:5000/team/img@sha256:abc",
            "nspawn:/srv/tree",
            "docker:img;cpus=1.5;memory=536870912;network=none;mount=/a:/b:ro;mount=/c:/d",
            "nspawn:/srv/tree;network=host;mount=/x:/y",
        ] {
            let iso: Isolation = s.parse().unwrap();
            assert_eq!(iso.to_string(), s);
        }
    }

    #[test]
    fn options_are_written_in_one_canonical_form() {
        let iso: Isolation = "docker:img;mount=/a:/b:rw;memory=512m;cpus=2.50".parse().unwrap();
        assert_eq!(iso.to_string(), "docker:img;cpus=2.5;memory=536870912;mount=/a:/b");
        let Isolation::Docker { limits, .. } = iso else { panic!() };
        assert_eq!(limits.millicpus, Some(2500));
        assert_eq!(parse_cpus(".25"), Ok(250));
    }

    #[test]
    fn refuses_unknown_or_malformed_modes() {
        for s in [
            "",
            "host",
            "Native",
            "docker:",
            "docker:a b",
            "docker:-rm",
            "docker:img;",
            "docker:img;cpus=0",
            "docker:img;cpus=abc",
            "docker:img;memory=1k",
            "docker:img;network=bridge",
            "docker:img;mount=relative:/x",
            "docker:img;mount=/a:/../etc",
            "docker:img;gpus=all",
            "docker:img;cpus=1;cpus=2",
            "native;network=none",
            "nspawn:relative",
            "nspawn:/",
            "nspawn:/.",
            "nspawn://",
            "nspawn:/srv/tree/",
            "nspawn:/srv/./tree",
            "docker:img;mount=/a//b:/c",
            "nspawn:/srv;cpus=1",
            "vm:x",
        ] {
            assert!(s.parse::<Isolation>().is_err(), "{s:?} must be refused");
        }
        assert!(serde_json::from_str::<Isolation>("\"chroot:/\"").is_err());
    }
}
