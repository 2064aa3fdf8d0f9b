//! Other machines, as network namespaces this harness makes: a link that can be cut, and
//! a machine reachable only over SSH.

use crate::*;

/// A link to a network namespace this fixture makes: a veth pair, the namespace at `.2`,
/// this side at `.1`, and a blackhole route so nothing aimed at the subnet leaves the
/// machine. It can be cut (its far end set down: packets vanish, as behind a partition)
/// and healed. The namespace, and everything still running in it, goes when it is dropped.
pub struct Link {
    netns: String,
    veth: String,
    subnet: String,
}

impl Link {
    pub fn new(kind: &str) -> Link {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = std::process::id() % 100;
        let (netns, veth) = (format!("ob{kind}{tag}_{n}"), format!("obv{kind}{tag}_{n}"));
        // Subnets apart for each test process (and for SSH hosts, as before).
        let subnet = if kind == "ssh" { format!("10.{}.{n}", 100 + tag) } else { format!("10.{tag}.{}", 100 + n) };
        sh(&format!(
            "ip netns add {netns} && ip link add {veth} type veth peer name {veth}p && ip link set {veth}p netns {netns} \
             && ip addr add {subnet}.1/24 dev {veth} && ip link set {veth} up \
             && ip -n {netns} addr add {subnet}.2/24 dev {veth}p && ip -n {netns} link set {veth}p up \
             && ip -n {netns} link set lo up && ip route add blackhole {subnet}.0/24 metric 4000"
        ));
        Link { netns, veth, subnet }
    }

    /// The command prefix that runs a program in the namespace.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.netns]
    }

    /// The namespace's address.
    pub fn addr(&self) -> String {
        format!("{}.2", self.subnet)
    }

    /// This machine's address on the link (where what runs in the namespace reaches it).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// An address on the link where nothing answers.
    pub fn unused_addr(&self) -> String {
        format!("{}.3", self.subnet)
    }

    /// Cuts the link: from now on every packet either way is lost, and nobody is told.
    pub fn cut(&self) {
        sh(&format!("ip -n {} link set {}p down", self.netns, self.veth));
    }

    /// Heals a cut link.
    pub fn heal(&self) {
        sh(&format!("ip -n {} link set {}p up", self.netns, self.veth));
    }

    /// The pids of the processes running in the namespace.
    pub fn pids(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.netns]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let (netns, veth, subnet) = (&self.netns, &self.veth, &self.subnet);
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns pids {netns} | xargs -r kill -9; ip netns del {netns}; ip link del {veth} 2>/dev/null; \
                     ip route del blackhole {subnet}.0/24 metric 4000"
                ),
            ])
            .status();
    }
}

/// A machine reachable only over SSH, for `openbox node add`: OpenSSH's sshd behind a
/// [`Link`] and in a mount namespace
/// where the account `obnode` exists (its own /etc/passwd, shadow and group, a home under
/// a temporary directory, another machine id). Everything it starts runs in those
/// namespaces and is killed, with the namespace, when it is dropped.
pub struct SshHost {
    link: Link,
    pub dir: TempDir,
    sshd: Option<Child>,
    /// The password of `obnode`.
    pub password: &'static str,
}

/// `correct horse`, as crypt(3) SHA-512 with a fixed salt.
const OBNODE_HASH: &str =
    "$6$obtestsalt$/RXWbCZ7QP.UM3EH9BXc8WF/izGQ30jLG8IaP8rPZ4YneHN6TwCarbHa3l4VyZ8A1v/OvGIE6tfUw4vYeykq21";

const OBNODE_UID: u32 = 4242;

fn sh(cmd: &str) {
    let status = Command::new("sh").args(["-c", cmd]).status().expect("sh");
    assert!(status.success(), "{cmd}: {status}");
}

impl SshHost {
    pub fn start() -> SshHost {
        let link = Link::new("ssh");
        let subnet = link.subnet.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let etc = |name: &str, extra: &str| {
            let text = std::fs::read_to_string(format!("/etc/{name}")).unwrap_or_default();
            std::fs::write(dir.path().join(name), format!("{text}{extra}\n")).expect("write");
        };
        etc("passwd", &format!("obnode:x:{OBNODE_UID}:{OBNODE_UID}:openbox test node:{d}/home:/bin/sh"));
        etc("shadow", &format!("obnode:{OBNODE_HASH}:19000:0:99999:7:::"));
        etc("group", &format!("obnode:x:{OBNODE_UID}:"));
        let n: u64 = subnet.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        std::fs::write(dir.path().join("machine-id"), format!("{:032x}\n", 0x0b55_0000u64 + n)).unwrap();
        std::fs::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        sh(&format!("chown -R {OBNODE_UID}:{OBNODE_UID} {d}/home && ssh-keygen -q -t ed25519 -N '' -f {d}/hostkey"));
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "ListenAddress {subnet}.2:22\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\nAuthorizedKeysFile %h/.ssh/authorized_keys\n\
                 UsePAM no\nStrictModes no\nUseDNS no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut host = SshHost { link, dir, sshd: None, password: "correct horse" };
        host.start_sshd();
        host
    }

    fn start_sshd(&mut self) {
        let d = self.dir.path().display().to_string();
        let log = self.dir.path().join("sshd.log");
        let _ = std::fs::remove_file(&log);
        let inner = format!(
            "for f in passwd shadow group machine-id; do mount --bind {d}/$f /etc/$f || exit 1; done; \
             exec /usr/sbin/sshd -D -f {d}/sshd_config -E {d}/sshd.log"
        );
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.link.netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &inner,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        self.sshd = Some(child);
        wait_until("sshd listening in its namespace", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Server listening"))
        });
    }

    /// `obnode@ADDR`.
    pub fn target(&self) -> String {
        format!("obnode@{}", self.addr())
    }

    /// The machine's address.
    pub fn addr(&self) -> String {
        self.link.addr()
    }

    /// An address on the link where nothing answers.
    pub fn unused_addr(&self) -> String {
        self.link.unused_addr()
    }

    /// This machine's address on the link to it (where a control plane it must reach listens).
    pub fn gateway(&self) -> String {
        self.link.gateway()
    }

    /// The host key's fingerprint, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen").arg("-lf").arg(self.dir.path().join("hostkey.pub")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).expect("a fingerprint").to_owned()
    }

    /// Lets `public_key` (OpenSSH format) log in.
    pub fn authorize(&self, public_key: &str) {
        let path = self.dir.path().join("home/.ssh/authorized_keys");
        std::fs::write(&path, format!("{}\n", public_key.trim())).unwrap();
        sh(&format!("chown -R {OBNODE_UID}:{OBNODE_UID} {}", self.dir.path().join("home").display()));
    }

    /// The machine gets a new host key (it was reinstalled, or someone is in the middle).
    pub fn swap_host_key(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let d = self.dir.path().display();
        sh(&format!(
            "pkill -F {d}/sshd.pid 2>/dev/null; rm -f {d}/hostkey {d}/hostkey.pub && ssh-keygen -q -t ed25519 -N '' -f {d}/hostkey"
        ));
        self.start_sshd();
    }

    /// A file under obnode's home, if it exists.
    pub fn home_file(&self, rel: &str) -> PathBuf {
        self.dir.path().join("home").join(rel)
    }

    /// The command lines of the processes running in the namespace besides sshd (an
    /// exited one waiting to be reaped does not count).
    pub fn processes(&self) -> Vec<String> {
        let pids = self.link.pids();
        let zombie = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
                .unwrap_or(true)
        };
        pids.iter()
            .filter(|pid| !zombie(pid))
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok())
            .map(|c| c.replace('\0', " ").trim().to_owned())
            // A process on its way out has let go of its memory, and its command line reads
            // empty before it shows as a zombie.
            .filter(|c| !c.is_empty() && !c.contains("sshd"))
            .collect()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.dir.path().join("sshd.log");
            eprintln!("---- {} ----\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
            let agent = self.dir.path().join("home/.local/state/openbox/agent.log");
            eprintln!("---- {} ----\n{}", agent.display(), std::fs::read_to_string(&agent).unwrap_or_default());
        }
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
