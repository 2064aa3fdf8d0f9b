//! The isolation a command runs under. Parsed strictly: anything unknown is an error, never
//! a silent fall back to the host.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// A shell on the node itself.
    #[default]
    Native,
    /// A container from this image on the node's Docker-API engine.
    Docker { image: String },
    /// A systemd-nspawn container over this root directory on the node.
    Nspawn { dir: String },
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Native => f.write_str("native"),
            Isolation::Docker { image } => write!(f, "docker:{image}"),
            Isolation::Nspawn { dir } => write!(f, "nspawn:{dir}"),
        }
    }
}

impl FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid isolation {s:?}: {why}"));
        if s == "native" {
            return Ok(Isolation::Native);
        }
        if let Some(image) = s.strip_prefix("docker:") {
            if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad("docker needs an image name without spaces, as in docker:debian:12");
            }
            return Ok(Isolation::Docker { image: image.to_owned() });
        }
        if let Some(dir) = s.strip_prefix("nspawn:") {
            if !dir.starts_with('/') || dir.chars().any(|c| c.is_control()) {
                return bad("nspawn needs an absolute directory, as in nspawn:/var/lib/machines/deb");
            }
            return Ok(Isolation::Nspawn { dir: dir.to_owned() });
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
    use super::Isolation;

    #[test]
    fn parses_the_three_modes_and_round_trips() {
        for s in ["native", "docker:debian:12", "nspawn:/srv/tree"] {
            let iso: Isolation = s.parse().unwrap();
            assert_eq!(iso.to_string(), s);
        }
    }

    #[test]
    fn refuses_unknown_or_malformed_modes() {
        for s in ["", "host", "Native", "docker:", "docker:a b", "nspawn:relative", "vm:x"] {
            assert!(s.parse::<Isolation>().is_err(), "{s:?} must be refused");
        }
        assert!(serde_json::from_str::<Isolation>("\"chroot:/\"").is_err());
    }
}
