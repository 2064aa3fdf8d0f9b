//! The command line, and its translation into one typed [`Request`]. Everything is
//! validated here, before anything runs.

use proto::time::Seconds;
use std::ffi::OsString;

use clap::{Args, Parser, Subcommand};
use proto::Isolation;
use proto::api::Target;
use proto::request::{
    CopyRequest, Direction, FanOutRequest, Forward, NodeAddRequest, Place, Request, RunRequest, SshLogin, TtyRequest,
    UpRequest,
};

const AFTER_HELP: &str = "\
Run a command on a node:
  openbox -t TAG CMD [ARGS…]      on an online node carrying TAG
  openbox -n NODE CMD [ARGS…]     on one node, by id or name
  openbox -t TAG -s NAME CMD      in persistent session NAME: same node, shell, cwd, env
  openbox -t TAG --docker IMG CMD in a fresh container from IMG (removed afterwards)
  openbox -t TAG --nspawn DIR CMD in a systemd-nspawn container over the root tree DIR
  openbox -n NODE -i              a login shell in a terminal on NODE (`-i CMD`: CMD in one)
  openbox -n NODE -L 8080:localhost:80   port 8080 here reaches NODE's port 80 (-R: the reverse)
A session with --docker or --nspawn keeps one container for all its commands.
Command words are joined with spaces and run by the node's `sh -c`, as ssh does:
  openbox -t mac 'cd /tmp && make'
The exit code is the remote command's (128+N for a signal); 255 means openbox itself failed,
141 that its stdout was closed before all output was written. As rsync's or git's remote
shell: rsync -e 'openbox -n' NODE:DIR/ DIR/, GIT_SSH_COMMAND='openbox -n' git clone NODE:REPO

Get started on this machine:
  openbox up                      local control plane + this machine as node `local`
  openbox -t local uname -a

Several control planes side by side: `openbox context --help`.";

const CONTEXT_HELP: &str = "\
A context is one login to a control plane, with its own key pair and its own openboxd.
`default` is the login `openbox login` makes; name another to log in beside it:
  openbox login --context work --server https://cp.work:7683 --token-file work-token
  openbox --context work nodes        one command in context work
  OPENBOX_CONTEXT=work openbox nodes  every command in this environment
  openbox context use work            every command from now on (`use default` goes back)
  openbox context ls                  the contexts; * marks the one in use
  openbox context rm work             forget it (`openbox --context work logout` first
                                      also revokes its token)
Which context a command uses: --context, else OPENBOX_CONTEXT, else the one `context use`
chose, else default.";

#[derive(Parser, Debug)]
#[command(
    name = "openbox",
    version = proto::VERSION,
    about = "Run commands on any of your machines: log in once, then `openbox -t TAG CMD`.",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "COMMAND"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Run this call directly instead of through openboxd (also OPENBOX_NO_DAEMON=1).
    #[arg(long, global = true)]
    pub no_daemon: bool,
    /// Say nothing but the answer and errors: no progress lines.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more: openbox's own log lines for this call on stderr (which node, which way,
    /// how long each step took); twice for more.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Use this context: a login to a control plane of its own (also OPENBOX_CONTEXT; see
    /// `openbox context --help`).
    #[arg(long, global = true, value_name = "NAME", value_parser = paths::Context::new)]
    pub context: Option<paths::Context>,
}

/// The names (and aliases) of `openbox`'s subcommands: a command word that is one of them
/// is a subcommand, not a command to run.
const SUBCOMMANDS: &[&str] = &[
    "login",
    "logout",
    "context",
    "whoami",
    "cp",
    "skill",
    "dashboard",
    "nodes",
    "node",
    "sessions",
    "session",
    "jobs",
    "job",
    "user",
    "up",
    "down",
    "audit",
    "daemon",
    "control",
    "agent",
    "service",
    "completions",
    "__complete",
    "man",
    "mcp",
    "help",
];

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Run on a node carrying this tag (with --all: on every node carrying all the tags
    /// given; repeatable).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Run on every node with the tag(s), at most --fanout at once; each line is prefixed
    /// `name: `, a summary goes to stderr, and the exit code is the largest remote one (255
    /// if a node was unreachable; an offline node counts as unreachable).
    #[arg(long, requires = "tags", conflicts_with_all = ["node", "session"])]
    all: bool,
    /// Keep at most SIZE bytes of each stream (e.g. 64k, 1m): its head and its tail, with a
    /// `[… N bytes omitted …]` mark between them [default: everything].
    #[arg(long, value_name = "SIZE", value_parser = parse_output_cap)]
    max_output: Option<u64>,
    /// With --all: how many nodes at once.
    #[arg(long, value_name = "N", default_value_t = 32, requires = "all")]
    fanout: usize,
    /// With --all: print lines as they are, without the node's name.
    #[arg(long, requires = "all")]
    no_prefix: bool,
    /// With --all: print each node's output together at the end, nodes with identical
    /// output merged (as `dshbak -c`).
    #[arg(long, requires = "all", conflicts_with = "no_prefix")]
    group: bool,
    /// Run on this node (id or name).
    #[arg(short = 'n', long = "node", value_name = "NODE", conflicts_with = "tags")]
    node: Option<String>,
    /// Run in the persistent session SID (same node, shell, cwd and environment).
    #[arg(short = 's', long = "session", value_name = "SID")]
    session: Option<String>,
    /// Run inside a container from IMAGE.
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["nspawn", "isolate"])]
    docker: Option<String>,
    /// Run inside a systemd-nspawn container over DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "isolate")]
    nspawn: Option<String>,
    /// Isolation: native, docker:IMAGE or nspawn:DIR [default: native, a shell on the node].
    #[arg(long, value_name = "MODE")]
    isolate: Option<String>,
    /// Container CPU limit, e.g. 2 or 0.5 (with --docker).
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Container memory limit, e.g. 512m or 2g (with --docker).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Container network: none (loopback only) or host (with --docker or --nspawn).
    #[arg(long, value_name = "none|host")]
    network: Option<String>,
    /// Mount a node directory into the container: SRC:DST or SRC:DST:ro (repeatable).
    #[arg(long = "mount", value_name = "SRC:DST[:ro]")]
    mounts: Vec<String>,
    /// Stop the command after this long (e.g. 30s, 1m30s, 500ms): exit 124, output so
    /// far is kept.
    #[arg(long, value_name = "DUR", value_parser = Seconds::parse)]
    timeout: Option<Seconds>,
    /// Give the command a terminal on the node (as `ssh -t`); with no command, a login
    /// shell. Keys go through as typed (Ctrl-C too) and the window size follows yours.
    /// Needs a terminal as stdin.
    #[arg(short = 'i', long = "tty", conflicts_with = "all")]
    tty: bool,
    /// Forward a port here to HOST:HOSTPORT as seen from the node, as `ssh -L`
    /// ([BIND:]PORT:HOST:HOSTPORT; BIND defaults to 127.0.0.1). Repeatable. With no
    /// command, holds the forwards until interrupted.
    #[arg(short = 'L', long = "local-forward", value_name = "[BIND:]PORT:HOST:HOSTPORT", conflicts_with = "all")]
    local_forwards: Vec<String>,
    /// Forward a port on the node's loopback to HOST:HOSTPORT as seen from here, as
    /// `ssh -R` (PORT 0: any free one, printed). Repeatable.
    #[arg(short = 'R', long = "remote-forward", value_name = "[BIND:]PORT:HOST:HOSTPORT", conflicts_with = "all")]
    remote_forwards: Vec<String>,
    /// Run it as a job: its id is printed at once, and it runs on the node whether or not you stay connected —
    /// openboxd may restart, this machine sleep — its output kept (`openbox jobs`, `openbox
    /// job logs -f ID`, `openbox job wait ID`). For builds and anything longer than a
    /// tool's time limit. In a session of its own unless -s names one.
    #[arg(short = 'd', long, conflicts_with_all = ["all", "tty", "local_forwards", "remote_forwards"])]
    detach: bool,
    /// With --detach: keep the job's stdin open for `openbox job send ID` (else it is empty).
    #[arg(long, requires = "detach")]
    stdin: bool,
    /// With --detach: run it in a terminal of this size, for interactive programs (vi, a
    /// REPL, an installer's prompts): `openbox job screen ID` shows its screen, and
    /// `openbox job send ID` types into it (e.g. `printf ':wq\r' | openbox job send ID`).
    #[arg(long, requires = "detach", value_name = "ROWSxCOLS", value_parser = terminal_size)]
    terminal: Option<proto::jobs::TerminalSize>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Log in to a control plane with a token (creates this machine's key pair).
    ///
    /// Use the command the control plane or an admin printed: over https it carries the
    /// fingerprint of the control plane's TLS key, checked before anything is saved.
    ///
    /// The token comes from --token-file or --token; without them from OPENBOX_LOGIN_TOKEN;
    /// without that, on a terminal, it is asked for (and not shown as it is typed).
    Login {
        /// The control plane's URL: https://HOST[:PORT], or http:// on loopback.
        #[arg(long, value_name = "URL")]
        server: String,
        /// A login token (obx_…), from the control plane's first start, `openbox user
        /// add` or `openbox user token`. Other users can see arguments and shell history
        /// keeps them: prefer --token-file, OPENBOX_LOGIN_TOKEN or the prompt.
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// A file holding the login token (the control plane's first start writes the
        /// admin's to one, mode 0600).
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<std::path::PathBuf>,
        /// The control plane's TLS key, pinned (SHA256:…). Without it the certificate must
        /// be signed by an authority this machine trusts.
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: Option<String>,
        /// Allow plain http to an address other than loopback or the tailnet: tokens cross
        /// the network unencrypted. Only on a network you trust.
        #[arg(long, conflicts_with = "fingerprint")]
        insecure_http: bool,
    },
    /// Forget the login and revoke its token.
    Logout,
    /// Work with several control planes side by side: list, choose and remove contexts.
    #[command(subcommand, after_help = CONTEXT_HELP)]
    Context(ContextCommand),
    /// Show who you are logged in as.
    Whoami,
    /// Copy files to or from a node, as scp does (over SFTP, through openboxd's connection).
    ///
    /// One side is NODE:PATH (a node by name or id; tag:TAG:PATH for one node carrying
    /// TAG), the other a path here. A remote PATH without a leading / is from the account's
    /// home. Modes are kept; a progress line shows on a terminal.
    /// Several sources go into a directory that exists, all from one side (one node).
    ///   openbox cp build.tar box:/tmp/          into /tmp on box
    ///   openbox cp a.py b.py box:src/           both into src/ in the home on box
    ///   openbox cp -r box:src/ ./src-copy       a directory, everything in it
    ///   openbox cp -s build app.py box:/src/    into session build's container on box
    #[command(verbatim_doc_comment)]
    Cp {
        /// Copy directories too, with everything in them.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Into or out of this session's container (the node side names the session's node).
        #[arg(short = 's', long, value_name = "SID")]
        session: Option<String>,
        /// Give up after this long (e.g. 30s, 5m, 1m30s): the copy is stopped and openbox
        /// exits 124. A file the copy was writing is left as far as it got, never reported
        /// copied.
        #[arg(long, value_name = "DUR", value_parser = Seconds::parse)]
        timeout: Option<Seconds>,
        /// Where from: NODE:PATH, tag:TAG:PATH, or a path here; one or more.
        #[arg(value_name = "SRC", required = true)]
        src: Vec<String>,
        /// Where to: NODE:PATH, tag:TAG:PATH, or a path here (an existing directory takes
        /// each source by its name inside it).
        #[arg(value_name = "DST", required = true)]
        dst: String,
    },
    /// Write openbox's instructions for AI coding agents, in each one's own place and format:
    /// a Claude Code skill, a Cursor rule, GitHub Copilot instructions, Codex's AGENTS.md, an
    /// opencode agent. The text names this fleet's tags. Running it again replaces openbox's
    /// section and leaves everything else in those files as it was.
    Skill {
        /// claude, cursor, copilot, codex, opencode, or all.
        #[arg(value_name = "AGENT", required = true)]
        agents: Vec<String>,
        /// The project to write into [default: the current directory].
        #[arg(long, value_name = "DIR", conflicts_with = "global")]
        dir: Option<std::path::PathBuf>,
        /// Write into your home directory, for every project (where the agent supports it).
        #[arg(long)]
        global: bool,
        /// Print the files instead of writing them.
        #[arg(long)]
        print: bool,
    },
    /// Open the web dashboard, logged in: prints a link that works once, within two
    /// minutes, and opens it in your browser.
    Dashboard {
        /// Only print the link.
        #[arg(long)]
        no_open: bool,
    },
    /// List the nodes in the fleet.
    Nodes {
        /// Only nodes carrying this tag.
        #[arg(long = "tag", short = 't')]
        tag: Option<String>,
    },
    /// Manage nodes: enrollment tokens, tags, names, removal.
    #[command(subcommand)]
    Node(NodeCommand),
    /// List your persistent sessions.
    Sessions,
    /// Manage persistent sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// List jobs (started with --detach): id, node, state or exit code, age, command.
    Jobs,
    /// Follow, wait for, feed, stop or remove a job.
    #[command(subcommand)]
    Job(JobCommand),
    /// Manage users (admins only).
    #[command(subcommand)]
    User(UserCommand),
    /// Start a personal fleet here: a local control plane, this machine as a node tagged `local`, logged in.
    Up {
        /// Control plane address for the local fleet: a loopback IP:PORT, remembered for
        /// the next `up`. (A control plane other machines reach runs as a service:
        /// `openbox service install control`.) [default: the last one given, else
        /// 127.0.0.1:7683]
        #[arg(long)]
        addr: Option<String>,
    },
    /// Stop what `openbox up` started.
    Down,
    /// Show the control plane's audit log (admins): every dispatch and every change to
    /// users, nodes, tokens and sessions — who, when, from where, with which certificate.
    Audit {
        /// Only what this user did.
        #[arg(long)]
        user: Option<String>,
        /// Only what concerns this node (id, or name of a node that still exists).
        #[arg(long)]
        node: Option<String>,
        /// Only the last DURATION (e.g. 30m, 1h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = proto::parse_secs)]
        since: Option<u64>,
    },
    /// Run or manage openboxd, the per-user daemon that keeps connections warm.
    ///
    /// The CLI starts openboxd by itself; `openbox daemon run` is for service managers.
    /// To reach nodes over a tailnet, start it once with `--mesh-control URL` (or set
    /// OPENBOX_MESH_CONTROL, and OPENBOX_MESH_AUTHKEY the first time, for the CLI to start
    /// it with); it is remembered. A control plane that holds the fleet's tailnet hands it
    /// out at `openbox login`.
    Daemon {
        #[arg(value_enum, default_value = "run")]
        action: DaemonAction,
        /// With run: join this tailnet's coordination server (Headscale or Tailscale).
        #[arg(long, value_name = "URL")]
        mesh_control: Option<OsString>,
        /// With run: file holding the tailnet auth key (the first time only).
        #[arg(long, value_name = "FILE")]
        mesh_authkey_file: Option<OsString>,
        /// With run: be on the remembered tailnet, or fail.
        #[arg(long)]
        mesh: bool,
    },
    /// Run the control plane (see `openbox control --help`).
    #[command(disable_help_flag = true)]
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the node agent (see `openbox agent --help`).
    #[command(disable_help_flag = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the control plane, the agent or openboxd as a service of this machine's service
    /// manager (systemd or launchd): install, uninstall, status.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print the shell completion script for bash, zsh or fish.
    ///
    /// Beside commands and flags, it completes node names (-n), tags (-t), session ids (-s)
    /// and contexts (--context) from what a running openboxd knows: at once, with no call
    /// to the control plane (nothing when openboxd is not running).
    /// The packages install them; to load them by hand:
    ///   bash: source <(openbox completions bash)
    ///   zsh:  openbox completions zsh > "${fpath[1]}/_openbox"
    ///   fish: openbox completions fish > ~/.config/fish/completions/openbox.fish
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// The names a completion offers, one per line (the completion scripts call it).
    #[command(name = "__complete", hide = true)]
    Complete {
        #[arg(value_enum)]
        kind: CompleteKind,
    },
    /// Write the manual pages (openbox.1 and one per command) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Serve openbox to AI agents over MCP on stdio (tools: run, run_all, list_nodes,
    /// list_sessions, end_session, read_file, write_file, edit_file, list_dir, stat, upload,
    /// download, start, read, wait, stop, list_jobs, write_stdin); see docs/agents.md.
    #[command(disable_help_flag = true)]
    Mcp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DaemonAction {
    /// Run openboxd in the foreground (as a service manager does).
    Run,
    /// Show the running openboxd's state.
    Status,
    /// Stop the running openboxd.
    Stop,
}

const SERVICE_HELP: &str = "\
Examples:
  sudo openbox service install control -- --addr 0.0.0.0:7683 --url https://10.0.0.5:7683
  sudo openbox service install agent -- --server https://10.0.0.5:7683 --fingerprint SHA256:… \\
      --token enroll_… --addr 0.0.0.0:7684 --advertise 10.0.0.7:7684
  openbox service install daemon          openboxd at login, for you
  openbox service status
A system service (the default as root, for the control plane and the agent) runs as root
from boot; a user service (--user; always for openboxd) runs as you while you are logged in.
Arguments after `--` are the role's own (`openbox control --help`, `openbox agent --help`);
an enrollment token given with --token (or OPENBOX_ENROLL_TOKEN) is moved into a file only
root or you can read, and the unit names the file: no secret is written into a unit.
Exit codes: 0 done (installed and started; status: running), 3 installed but not started
because no service manager runs here (what to run instead is printed; status: not
running), 4 (status) not installed, 1 an error.";

#[derive(Subcommand, Debug)]
#[command(after_help = SERVICE_HELP)]
pub enum ServiceCommand {
    /// Write the service's unit (systemd) or property list (launchd), enable and start it.
    /// Installing again replaces it and restarts the service with the new arguments.
    Install {
        #[arg(value_enum)]
        role: ServiceRole,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Print the unit instead of installing it.
        #[arg(long)]
        print: bool,
        /// The role's own arguments, after `--`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Stop and disable the service and remove its unit and token file (its state stays).
    Uninstall {
        #[arg(value_enum)]
        role: ServiceRole,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Show whether each role is installed as a service, enabled and running.
    Status {
        #[arg(value_enum)]
        role: Option<ServiceRole>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ServiceRole {
    /// The control plane (openbox-control).
    Control,
    /// The node agent (openbox-agent).
    Agent,
    /// openboxd, your per-user daemon.
    Daemon,
}

impl From<ServiceRole> for service::Role {
    fn from(r: ServiceRole) -> service::Role {
        match r {
            ServiceRole::Control => service::Role::Control,
            ServiceRole::Agent => service::Role::Agent,
            ServiceRole::Daemon => service::Role::Daemon,
        }
    }
}

#[derive(Args, Debug, Clone, Copy)]
pub struct ScopeArgs {
    /// Your own service, run while you are logged in (systemd --user, a launchd agent).
    #[arg(long, conflicts_with = "system")]
    pub user: bool,
    /// The machine's service, run as root from boot [default for control and agent as root].
    #[arg(long)]
    pub system: bool,
}

/// What `openbox __complete` lists.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteKind {
    Nodes,
    Tags,
    Sessions,
    Contexts,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Mint a single-use enrollment token and print the agent command that uses it.
    Token {
        /// Tag the new node will carry (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// How long the token stays valid (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = proto::parse_secs)]
        ttl: u64,
    },
    /// Make a machine you can reach over SSH a node: checks its host key, installs the
    /// agent there as a service (systemd or launchd; nohup where there is none), enrolls it
    /// with a fresh single-use token and waits until it is online.
    ///
    /// The login is a key file (--key), a password (--password asks on the terminal;
    /// --password-stdin reads one line), or else the keys of your SSH agent (SSH_AUTH_SOCK).
    /// The host key must be in known_hosts, or match --host-key-fingerprint, or be taken
    /// with --accept-new (then it is recorded); a changed key is always refused.
    #[command(verbatim_doc_comment)]
    Add {
        /// The machine: [USER@]HOST[:PORT] (IPv6 in brackets).
        target: String,
        /// Log in with this private key file.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["password", "password_stdin"])]
        key: Option<std::path::PathBuf>,
        /// Log in with a password, asked for on the terminal (never on the command line).
        #[arg(long, conflicts_with = "password_stdin")]
        password: bool,
        /// Log in with a password read from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Tag for the node (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Node name [default: the machine's host name].
        #[arg(long)]
        name: Option<String>,
        /// Serve on the fleet's tailnet only (no TCP port).
        #[arg(long)]
        mesh: bool,
        /// The host key you expect (`ssh-keygen -lf` on the machine shows it).
        #[arg(long, value_name = "SHA256:…")]
        host_key_fingerprint: Option<String>,
        /// Take the host key of a machine known_hosts does not know, and record it.
        #[arg(long)]
        accept_new: bool,
        /// The known_hosts file [default: ~/.ssh/known_hosts].
        #[arg(long, value_name = "FILE")]
        known_hosts: Option<std::path::PathBuf>,
        /// The release directory to take the agent from (the machine's tarball, e.g.
        /// openbox-VERSION-macos-arm64.tar.gz, checked against SHA256SUMS); needed when the
        /// machine's OS or CPU differs from this one's, whose own agent is used otherwise.
        #[arg(long, value_name = "DIR")]
        from: Option<std::path::PathBuf>,
        /// Install again even when the machine is already a node.
        #[arg(long)]
        reinstall: bool,
        /// The port the node's agent listens on.
        #[arg(long, default_value_t = 7684)]
        agent_port: u16,
    },
    /// Remove a node and revoke its identity.
    Rm { node: String },
    /// Add (+TAG) or remove (-TAG) tags: `openbox node tag web1 +gpu -old`.
    Tag {
        node: String,
        #[arg(allow_hyphen_values = true, required = true, value_name = "+TAG|-TAG")]
        changes: Vec<String>,
    },
    /// Rename a node.
    Rename { node: String, name: String },
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// List the contexts: name, control plane, user; `*` marks the one in use.
    Ls,
    /// Print the name of the context in use.
    Show,
    /// Use NAME for every command that names no context (`default` goes back).
    Use {
        #[arg(value_parser = paths::Context::new)]
        name: paths::Context,
    },
    /// Remove a context: stops its openboxd and deletes its login and key pair. Its token
    /// stays valid: `openbox --context NAME logout` first revokes it.
    Rm {
        #[arg(value_parser = paths::Context::new)]
        name: paths::Context,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// End a session: its shell on the node is stopped.
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Print a job's output so far (stdout and stderr, each to its own); with -f, then what
    /// comes until it ends, and exit with its code.
    Logs {
        /// Follow until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
        id: String,
    },
    /// Wait until a job ends and exit with its code (124 when it still runs at --timeout,
    /// 255 when it was lost).
    Wait {
        #[arg(long, value_name = "DUR", value_parser = Seconds::parse)]
        timeout: Option<Seconds>,
        id: String,
    },
    /// Stop a job: its command on the node is interrupted, then ended.
    Stop { id: String },
    /// Send this command's stdin to a job's (started with --stdin).
    Send {
        /// Close the job's stdin after it (the job reads end of input).
        #[arg(long)]
        close: bool,
        id: String,
    },
    /// Remove an ended job and its output (here and on its node).
    Rm { id: String },
    /// Print a terminal job's screen (started with --terminal): as it shows now, or as it
    /// was when the job ended. --json adds its size and the cursor.
    Screen { id: String },
}

/// The environment variable a login token may come in (kept out of arguments and history).
const LOGIN_TOKEN_ENV: &str = "OPENBOX_LOGIN_TOKEN";

/// A login token given neither as an argument nor in a file: from OPENBOX_LOGIN_TOKEN, else
/// asked for on the terminal, not echoed.
fn login_token_elsewhere() -> Result<String, String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if let Ok(token) = std::env::var(LOGIN_TOKEN_ENV)
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(format!(
            "no login token: give --token-file FILE or {LOGIN_TOKEN_ENV} (or run this on a terminal to be asked)"
        ));
    }
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let was = tcgetattr(&stdin).map_err(|e| format!("reading the terminal's settings: {e}"))?;
    let mut quiet = was.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    eprint!("Login token (not shown as you type): ");
    tcsetattr(&stdin, OptionalActions::Now, &quiet).map_err(|e| format!("turning the terminal's echo off: {e}"))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &was);
    eprintln!();
    read.map_err(|e| format!("reading the token: {e}"))?;
    match line.trim() {
        "" => Err("no login token typed".into()),
        token => Ok(token.to_owned()),
    }
}

/// `--terminal ROWSxCOLS`, e.g. 24x80.
fn terminal_size(text: &str) -> Result<proto::jobs::TerminalSize, String> {
    let (rows, cols) = text.split_once(['x', 'X']).ok_or("give ROWSxCOLS, e.g. 24x80")?;
    let n = |s: &str, what: &str, max: u16| match s.trim().parse::<u16>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: {what} must be 1 to {max}")),
    };
    use proto::jobs::TerminalSize;
    Ok(TerminalSize {
        rows: n(rows, "rows", TerminalSize::MAX_ROWS)?,
        cols: n(cols, "columns", TerminalSize::MAX_COLS)?,
    })
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user and print their login command.
    Add { name: String },
    /// List users.
    Ls,
    /// Remove a user; their tokens stop working.
    Rm { name: String },
    /// Issue a new login token for an existing user and print their login command.
    Token { name: String },
    /// Let a user run on the nodes of a tag, or on one node. Users other than admins run
    /// nothing until granted. A node beside the control plane (able to read its files) is
    /// reached only by a grant that names it. Granting the same tag or node again replaces
    /// the earlier grant.
    #[command(group = clap::ArgGroup::new("on").required(true).args(["tag", "node"]))]
    Grant {
        name: String,
        /// The nodes carrying this tag (now and later).
        #[arg(long, short = 't')]
        tag: Option<String>,
        /// One node, by name or id.
        #[arg(long, short = 'n')]
        node: Option<String>,
        /// Allow only this isolation kind (native, docker, nspawn); repeat for several.
        /// Without it, any.
        #[arg(long = "isolation", value_name = "KIND")]
        isolation: Vec<String>,
    },
    /// Take back a grant on a tag or a node.
    #[command(group = clap::ArgGroup::new("on").required(true).args(["tag", "node"]))]
    Revoke {
        name: String,
        #[arg(long, short = 't')]
        tag: Option<String>,
        #[arg(long, short = 'n')]
        node: Option<String>,
    },
}

/// What the CLI will do once the flags are understood.
#[allow(clippy::large_enum_variant, reason = "one value per process, made once")]
pub enum Action {
    /// Hand this request to openboxd; `json` asks for machine-readable output.
    Call { request: Request, json: bool, no_daemon: bool, verbosity: i8 },
    /// Get a dashboard link from openboxd, print it, and open it unless `no_open`.
    Dashboard { json: bool, no_open: bool },
    /// Run another role's binary with these arguments.
    Exec(&'static str, Vec<OsString>),
    /// Stop openboxd if it runs (without starting one to do so).
    StopDaemon { json: bool },
    /// List, choose or remove contexts (done here, without a daemon).
    Context { command: ContextCommand, json: bool },
    /// Install, remove or show services (done here, without a daemon or a context).
    Service { command: ServiceCommand, json: bool },
    /// Print a shell's completion script.
    Completions(Shell),
    /// Print the names a completion offers.
    Complete(CompleteKind),
    /// Write the manual pages into a directory.
    Man(std::path::PathBuf),
}

/// `--max-output`: a size of at least 2 bytes (one for the head, one for the tail).
fn parse_output_cap(s: &str) -> Result<u64, String> {
    let n = proto::isolation::parse_bytes(s)?;
    if n < 2 { Err(format!("{s:?}: keep at least 2 bytes")) } else { Ok(n) }
}

/// `path` made absolute (openboxd runs elsewhere).
fn absolute(path: &std::path::Path) -> Result<String, String> {
    std::path::absolute(path).map(|p| p.display().to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

fn name(kind: &str, v: &str) -> Result<String, String> {
    proto::check_name(kind, v).map(|_| v.to_owned()).map_err(|e| e.to_string())
}

/// What a grant is on: `--tag` or `--node` (clap makes sure exactly one is given).
fn grant_target(tag: Option<String>, node: Option<String>) -> Result<Target, String> {
    match (tag, node) {
        (Some(t), None) => Ok(Target::Tag(name("tag", &t)?)),
        (None, Some(n)) => Ok(Target::Node(name("node name", &n)?)),
        _ => Err("give either --tag or --node".into()),
    }
}

/// Whether the command line only asks for openbox's version: answered without clap.
pub fn asks_version(argv: &[OsString]) -> bool {
    matches!(argv, [_, flag] if flag == "--version" || flag == "-V")
}

/// What `openbox --version` prints (clap's own form of it).
pub fn version() -> String {
    format!("openbox {}\n", proto::VERSION)
}

impl Cli {
    /// Parses the whole command line, exiting with clap's message on a usage error.
    pub fn from_argv(argv: Vec<OsString>) -> Cli {
        Self::try_from_argv(argv).unwrap_or_else(|e| e.exit())
    }

    /// Parses the whole command line. Leading `--json` / `--no-daemon` / `--context NAME`
    /// are taken out first: before a subcommand (`openbox --json nodes`) they would
    /// otherwise be read as the start of the run form.
    pub fn try_from_argv(mut argv: Vec<OsString>) -> Result<Cli, clap::Error> {
        let (mut json, mut no_daemon, mut context) = (false, false, None);
        while let Some(flag) = argv.get(1).and_then(|a| a.to_str()).map(str::to_owned) {
            match flag.as_str() {
                "--json" => json = true,
                "--no-daemon" => no_daemon = true,
                "--context" if argv.len() > 2 => context = Some(argv.remove(2)),
                _ => match flag.strip_prefix("--context=") {
                    Some(name) => context = Some(name.into()),
                    None => break,
                },
            }
            argv.remove(1);
        }
        let mut cli = match Cli::common_run(&argv) {
            Some(cli) => cli,
            None => Cli::try_parse_from(argv)?,
        };
        cli.json |= json;
        cli.no_daemon |= no_daemon;
        if let Some(name) = context.filter(|_| cli.context.is_none()) {
            let name = name.to_str().unwrap_or_default();
            cli.context = Some(paths::Context::new(name).map_err(|e| {
                <Cli as clap::CommandFactory>::command().error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value '{name}' for '--context': {e}"),
                )
            })?);
        }
        Ok(cli)
    }

    /// The run form most calls take — `[-t TAG | -n NODE] [-s SID] [--timeout DUR] [-q|-v]
    /// [--json] CMD [ARGS…]`, each flag at most once — read without building clap's command
    /// tree, which costs more than the rest of the CLI's start. Anything else (another flag,
    /// a repeated one, `--`, a command word that names a subcommand) is `None`, for clap to
    /// read. A test checks this reads every such line exactly as clap does.
    fn common_run(argv: &[OsString]) -> Option<Cli> {
        let mut words = argv.iter().skip(1).map(|w| w.to_str());
        let mut cli = Cli {
            command: None,
            run: RunArgs { fanout: 32, ..RunArgs::default() },
            json: false,
            no_daemon: false,
            quiet: false,
            verbose: 0,
            context: None,
        };
        fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
            slot.is_none().then(|| *slot = Some(value))
        }
        loop {
            let word = words.next()??;
            let mut value = || words.next().flatten().filter(|v| !v.starts_with('-')).map(str::to_owned);
            match word {
                "-t" | "--tag" if cli.run.tags.is_empty() => cli.run.tags.push(value()?),
                "-n" | "--node" => once(&mut cli.run.node, value()?)?,
                "-s" | "--session" => once(&mut cli.run.session, value()?)?,
                "--timeout" => once(&mut cli.run.timeout, Seconds::parse(&value()?).ok()?)?,
                "--json" if !cli.json => cli.json = true,
                "-q" | "--quiet" if !cli.quiet && cli.verbose == 0 => cli.quiet = true,
                "-v" | "--verbose" if !cli.quiet && cli.verbose == 0 => cli.verbose = 1,
                _ if word.starts_with('-') || SUBCOMMANDS.contains(&word) => return None,
                command => {
                    cli.run.command.push(command.to_owned());
                    break;
                }
            }
        }
        if !cli.run.tags.is_empty() && cli.run.node.is_some() {
            return None; // clap's own message says they conflict
        }
        for word in words {
            cli.run.command.push(word?.to_owned());
        }
        Some(cli)
    }

    pub fn into_action(self) -> Result<Action, String> {
        let mut json = self.json;
        let verbosity = if self.quiet { -1 } else { self.verbose.min(3) as i8 };
        let request = match self.command {
            None if self.run.all => Request::FanOut(self.run.into_fan_out()?),
            None if self.run.detach => {
                let (stdin, terminal) = (self.run.stdin, self.run.terminal);
                Request::JobStart { run: self.run.into_request()?, stdin, terminal }
            }
            None => Request::Run(self.run.into_request()?),
            Some(Command::Control { args }) => return Ok(Action::Exec("openbox-control", args)),
            Some(Command::Mcp { args }) => return Ok(Action::Exec("openbox-mcp", args)),
            Some(Command::Agent { args }) => return Ok(Action::Exec("openbox-agent", args)),
            Some(Command::Daemon { action: DaemonAction::Run, mesh_control, mesh_authkey_file, mesh }) => {
                let mut args = Vec::new();
                for (flag, value) in [("--mesh-control", mesh_control), ("--mesh-authkey-file", mesh_authkey_file)] {
                    if let Some(v) = value {
                        args.extend([OsString::from(flag), v]);
                    }
                }
                if mesh {
                    args.push("--mesh".into());
                }
                return Ok(Action::Exec("openboxd", args));
            }
            Some(
                Command::Daemon { mesh_control: Some(_), .. } | Command::Daemon { mesh_authkey_file: Some(_), .. },
            )
            | Some(Command::Daemon { mesh: true, .. }) => {
                return Err("the --mesh flags go with `openbox daemon run`".into());
            }
            Some(Command::Daemon { action: DaemonAction::Status, .. }) => Request::DaemonStatus,
            Some(Command::Daemon { action: DaemonAction::Stop, .. }) => return Ok(Action::StopDaemon { json }),
            Some(Command::Login { server, token, token_file, fingerprint, insecure_http }) => {
                let token = match (token, token_file) {
                    (Some(token), _) => token,
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .map_err(|e| format!("reading the login token from {}: {e}", file.display()))?
                        .trim()
                        .to_owned(),
                    (None, None) => login_token_elsewhere()?,
                };
                Request::Login { server, token, fingerprint, insecure_http }
            }
            Some(Command::Logout) => Request::Logout,
            Some(Command::Context(command)) => return Ok(Action::Context { command, json }),
            Some(Command::Service(command)) => return Ok(Action::Service { command, json }),
            Some(Command::Completions { shell }) => return Ok(Action::Completions(shell)),
            Some(Command::Complete { kind }) => return Ok(Action::Complete(kind)),
            Some(Command::Man { out }) => return Ok(Action::Man(out)),
            Some(Command::Sessions) => Request::Sessions,
            Some(Command::Jobs) => Request::Jobs,
            Some(Command::Job(c)) => match c {
                JobCommand::Logs { follow, id } => Request::JobLogs { id, follow },
                JobCommand::Wait { timeout, id } => Request::JobWait { id, timeout_secs: timeout },
                JobCommand::Stop { id } => Request::JobStop { id },
                JobCommand::Send { close, id } => Request::JobSend { id, close },
                JobCommand::Rm { id } => Request::JobRemove { id },
                JobCommand::Screen { id } => Request::JobScreen { id },
            },
            Some(Command::Session(SessionCommand::Rm { id })) => {
                Request::SessionRemove { id: name("session id", &id)? }
            }
            Some(Command::Whoami) => Request::Whoami,
            Some(Command::Cp { recursive, session, timeout, src, dst }) => {
                if timeout.is_some_and(Seconds::is_zero) {
                    return Err("--timeout must be more than 0 (such as 500ms, 30s or 1m30s)".into());
                }
                let session = session.map(|s| name("session id", &s)).transpose()?;
                let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
                let from: Vec<Place> = src.iter().map(|s| Place::parse(s, &cwd)).collect::<Result<_, _>>()?;
                let to = Place::parse(&dst, &cwd)?;
                for place in &from {
                    match (place, &to) {
                        (Place::Local { .. }, Place::Remote { .. }) | (Place::Remote { .. }, Place::Local { .. }) => {}
                        (Place::Local { .. }, Place::Local { .. }) => {
                            return Err(
                                "both places are here: one side of `openbox cp` is NODE:PATH (use cp for local copies)"
                                    .into(),
                            );
                        }
                        (Place::Remote { .. }, Place::Remote { .. }) => {
                            return Err(
                                "both places are on nodes: copy to here first, then on (one side is a local path)"
                                    .into(),
                            );
                        }
                    }
                }
                let node = |p: &Place| match p {
                    Place::Remote { target, .. } => Some(target.clone()),
                    Place::Local { .. } => None,
                };
                if from.iter().any(|p| node(p) != node(&from[0])) {
                    return Err("the sources are on different nodes: copy from one node at a time".into());
                }
                let progress = rustix::termios::isatty(std::io::stderr()) && !json && !self.quiet;
                Request::Copy(CopyRequest { from, to, recursive, progress, session, timeout_secs: timeout })
            }
            Some(Command::Dashboard { no_open }) => return Ok(Action::Dashboard { json, no_open }),
            Some(Command::Skill { agents, dir, global, print }) => {
                const KNOWN: [&str; 5] = ["claude", "cursor", "copilot", "codex", "opencode"];
                let mut chosen = Vec::new();
                for a in agents {
                    match a.as_str() {
                        // openboxd knows which of them `all` skips with --global.
                        k if k == "all" || KNOWN.contains(&k) => chosen.push(a),
                        other => {
                            return Err(format!("{other:?}: give claude, cursor, copilot, codex, opencode or all"));
                        }
                    }
                }
                let mut seen = std::collections::HashSet::new();
                chosen.retain(|a| seen.insert(a.clone()));
                let dir = match (global, dir) {
                    (true, _) => std::env::var("HOME").map_err(|_| "HOME is not set".to_owned())?,
                    (false, Some(d)) => absolute(&d)?,
                    (false, None) => absolute(std::path::Path::new("."))?,
                };
                Request::Skill { agents: chosen, dir, global, print }
            }
            Some(Command::Nodes { tag }) => Request::Nodes { tag: tag.map(|t| name("tag", &t)).transpose()? },
            Some(Command::Up { addr }) => {
                Request::Up(UpRequest { control_addr: addr.as_deref().map(loopback).transpose()? })
            }
            Some(Command::Down) => Request::Down,
            Some(Command::Audit { user, node, since }) => Request::Audit {
                user: user.map(|u| name("user name", &u)).transpose()?,
                node: node.map(|n| name("node name", &n)).transpose()?,
                since_secs: since,
            },
            Some(Command::User(UserCommand::Add { name: n })) => Request::UserAdd { name: name("user name", &n)? },
            Some(Command::User(UserCommand::Ls)) => Request::UserList,
            Some(Command::User(UserCommand::Rm { name: n })) => Request::UserRemove { name: name("user name", &n)? },
            Some(Command::User(UserCommand::Token { name: n })) => Request::UserToken { name: name("user name", &n)? },
            Some(Command::User(UserCommand::Grant { name: n, tag, node, isolation })) => {
                for k in &isolation {
                    proto::isolation::check_kind(k).map_err(|e| format!("--isolation {e}"))?;
                }
                let grant = proto::api::Grant { on: grant_target(tag, node)?, isolation };
                Request::UserGrant { name: name("user name", &n)?, grant }
            }
            Some(Command::User(UserCommand::Revoke { name: n, tag, node })) => {
                Request::UserRevoke { name: name("user name", &n)?, on: grant_target(tag, node)? }
            }
            Some(Command::Node(NodeCommand::Token { tags, ttl })) => Request::NodeToken {
                tags: tags.iter().map(|t| name("tag", t)).collect::<Result<_, _>>()?,
                ttl_secs: ttl,
            },
            Some(Command::Node(NodeCommand::Rm { node })) => Request::NodeRemove { node },
            Some(Command::Node(NodeCommand::Add {
                target,
                key,
                password,
                password_stdin,
                tags,
                name: node_name,
                mesh,
                host_key_fingerprint,
                accept_new,
                known_hosts,
                from,
                reinstall,
                agent_port,
            })) => {
                let (user, host, port) = crate::prompt::ssh_target(&target)?;
                let login = if let Some(k) = key {
                    SshLogin::Key(absolute(&k)?)
                } else if password || password_stdin {
                    let pw = if password {
                        crate::prompt::password(&format!("{user}@{host}'s password: "))?
                    } else {
                        crate::prompt::stdin_line()?
                    };
                    SshLogin::Password(proto::request::Redacted(pw))
                } else {
                    SshLogin::Agent(crate::prompt::agent_socket()?)
                };
                let known_hosts = match known_hosts {
                    Some(f) => absolute(&f)?,
                    None => crate::prompt::default_known_hosts()?,
                };
                Request::NodeAdd(NodeAddRequest {
                    user,
                    host,
                    port,
                    login,
                    known_hosts,
                    host_key_fingerprint,
                    accept_new,
                    tags: tags.iter().map(|t| name("tag", t)).collect::<Result<_, _>>()?,
                    name: node_name.map(|n| name("node name", &n)).transpose()?,
                    mesh,
                    from: from.map(|f| absolute(&f)).transpose()?,
                    reinstall,
                    agent_port,
                })
            }
            Some(Command::Node(NodeCommand::Rename { node, name: n })) => {
                Request::NodeRename { node, name: name("node name", &n)? }
            }
            Some(Command::Node(NodeCommand::Tag { node, changes })) => {
                let (mut add, mut remove) = (Vec::new(), Vec::new());
                for c in changes {
                    // `-TAG` values swallow later flags; take --json back out.
                    if c == "--json" {
                        json = true;
                        continue;
                    }
                    match (c.strip_prefix('+'), c.strip_prefix('-')) {
                        (Some(t), _) => add.push(name("tag", t)?),
                        (_, Some(t)) => remove.push(name("tag", t)?),
                        _ => {
                            return Err(format!("{c:?}: write +TAG to add a tag or -TAG to remove one"));
                        }
                    }
                }
                Request::NodeTag { node, add, remove }
            }
        };
        Ok(Action::Call { request, json, no_daemon: self.no_daemon, verbosity })
    }
}

impl RunArgs {
    /// The isolation the flags ask for, validated into its one typed value.
    fn isolation(&self) -> Result<Isolation, String> {
        let no_semicolon = |flag: &str, v: &str| {
            if v.contains(';') { Err(format!("{flag} {v:?}: ';' is not allowed")) } else { Ok(v.to_owned()) }
        };
        let mut text = match (&self.docker, &self.nspawn, &self.isolate) {
            (Some(image), _, _) => format!("docker:{}", no_semicolon("--docker", image)?),
            (_, Some(dir), _) => format!("nspawn:{}", no_semicolon("--nspawn", dir)?),
            (_, _, Some(mode)) => mode.clone(),
            _ => "native".to_owned(),
        };
        let options = [
            ("cpus", "--cpus", &self.cpus),
            ("memory", "--memory", &self.memory),
            ("network", "--network", &self.network),
        ];
        for (name, flag, value) in options {
            if let Some(v) = value {
                text += &format!(";{name}={}", no_semicolon(flag, v)?);
            }
        }
        for m in &self.mounts {
            text += &format!(";mount={}", no_semicolon("--mount", m)?);
        }
        text.parse::<Isolation>().map_err(|e| e.to_string())
    }

    fn into_fan_out(self) -> Result<FanOutRequest, String> {
        let isolation = self.isolation()?;
        if self.command.is_empty() {
            return Err("no command given to run: openbox -t TAG --all CMD [ARGS…]".into());
        }
        if self.timeout.is_some_and(Seconds::is_zero) {
            return Err("--timeout must be more than 0 (such as 500ms, 30s or 1m30s)".into());
        }
        if self.fanout == 0 {
            return Err("--fanout must be at least 1".into());
        }
        Ok(FanOutRequest {
            tags: self.tags.iter().map(|t| name("tag", t)).collect::<Result<_, _>>()?,
            isolation,
            command: self.command,
            timeout_secs: self.timeout,
            fanout: self.fanout,
            prefix: !self.no_prefix,
            group: self.group,
            max_output: self.max_output,
        })
    }

    fn into_request(self) -> Result<RunRequest, String> {
        let isolation = self.isolation()?;
        if self.tags.len() > 1 {
            return Err("several -t pick the nodes carrying all of them: add --all to run on each".into());
        }
        let target = match (self.tags.into_iter().next(), self.node) {
            (Some(t), None) => Target::Tag(name("tag", &t)?),
            (None, Some(n)) => Target::Node(n),
            (None, None) if self.command.is_empty() => {
                return Err("no command given; see `openbox --help`".into());
            }
            (None, None) => {
                let word = &self.command[0];
                let hint = match did_you_mean(word) {
                    Some(near) => format!("; did you mean `openbox {near}`?"),
                    None => " (see `openbox --help`).".to_owned(),
                };
                return Err(format!(
                    "{word:?} is not an openbox command{hint} To run it on a node, say where: -t TAG or -n NODE"
                ));
            }
            (Some(_), Some(_)) => return Err("give -t TAG or -n NODE, not both".into()),
        };
        let forwards: Vec<Forward> = (self.local_forwards.iter().map(|s| Forward::parse(Direction::Local, s)))
            .chain(self.remote_forwards.iter().map(|s| Forward::parse(Direction::Remote, s)))
            .collect::<Result<_, _>>()?;
        if !forwards.is_empty() && (isolation != Isolation::Native || self.session.is_some()) {
            return Err("port forwarding reaches the node itself: leave out --docker, --nspawn and -s".into());
        }
        if self.command.is_empty() && !self.tty && forwards.is_empty() {
            return Err(format!(
                "no command given to run on {target}: openbox -t TAG CMD [ARGS…] (or -i for a shell, -L/-R to forward)"
            ));
        }
        let tty = match self.tty {
            true if !rustix::termios::isatty(std::io::stdin()) => {
                return Err("-i gives the command a terminal, so stdin must be one; without -i, input is passed through as it is".into());
            }
            true => Some(TtyRequest {
                term: std::env::var("TERM").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "dumb".into()),
            }),
            false => None,
        };
        let session = self.session.map(|s| name("session id", &s)).transpose()?;
        if self.timeout.is_some_and(Seconds::is_zero) {
            return Err("--timeout must be more than 0 (such as 500ms, 30s or 1m30s)".into());
        }
        Ok(RunRequest {
            target,
            session,
            isolation,
            command: self.command,
            timeout_secs: self.timeout,
            max_output: self.max_output,
            tty,
            forwards,
        })
    }
}

/// `openbox up`'s control-plane address: a loopback one. The personal fleet talks plain
/// HTTP to it, which the control plane serves only there; a fleet for other machines is a
/// service with HTTPS.
/// The command or flag of `openbox` closest to a mistyped `word`, if one is near enough.
fn did_you_mean(word: &str) -> Option<String> {
    let cli = <Cli as clap::CommandFactory>::command();
    let candidates: Vec<String> = if word.starts_with("--") {
        cli.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect()
    } else {
        cli.get_subcommands()
            .flat_map(|c| std::iter::once(c.get_name()).chain(c.get_all_aliases()))
            .map(str::to_owned)
            .collect()
    };
    // Close for its length: one edit in a short word, two in a longer one, none in two
    // letters (`ps` is a program, not a typo of `cp`).
    let allowed = match word.trim_start_matches('-').len() {
        0..=2 => return None,
        3..=4 => 1,
        _ => 2,
    };
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, &c), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn loopback(addr: &str) -> Result<String, String> {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Ok(addr.to_owned()),
        Ok(_) => Err(format!(
            "`openbox up --addr {addr}`: up runs a fleet for this machine, on a loopback address \
             (127.0.0.1:PORT or [::1]:PORT). For a control plane other machines reach, run it as a \
             service: `openbox service install control -- --addr {addr}` (it serves HTTPS there; see docs/deploy.md)"
        )),
        Err(_) => Err(format!("`openbox up --addr {addr}`: expected IP:PORT, such as 127.0.0.1:7683")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(args: &[&str]) -> Result<Action, String> {
        let argv = std::iter::once("openbox").chain(args.iter().copied()).map(OsString::from).collect();
        Cli::try_from_argv(argv).map_err(|e| e.to_string())?.into_action()
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("openbox").chain(args.iter().copied()).map(OsString::from).collect()
    }

    #[test]
    fn the_common_run_form_is_read_without_clap_exactly_as_clap_reads_it() {
        let common: &[&[&str]] = &[
            &["-t", "gpu", "true"],
            &["-n", "box", "ls", "-la", "--json", "-t", "x"],
            &["--tag", "mac", "-s", "build", "make", "-j4"],
            &["-s", "build", "-t", "mac", "--timeout", "1m30s", "--json", "-q", "pwd"],
            &["--node", "box", "--session", "s1", "-v", "sh", "-c", "echo 'a b'"],
            &["--timeout", "0", "-t", "gpu", "true"],
            &["ls"],
            &["nodez"],
            &["-s", "only-a-session", "true"],
        ];
        for args in common {
            let fast = Cli::common_run(&argv(args)).unwrap_or_else(|| panic!("{args:?} is the common run form"));
            let clap = Cli::try_parse_from(argv(args)).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{args:?}");
        }
        let for_clap: &[&[&str]] = &[
            &[],
            &["nodes"],
            &["help"],
            &["__complete", "nodes"],
            &["-t", "gpu", "nodes"],
            &["-t", "gpu"],
            &["-t", "a", "-t", "b", "true"],
            &["-t", "a", "-n", "b", "true"],
            &["-q", "-v", "-t", "a", "true"],
            &["-v", "-v", "-t", "a", "true"],
            &["-t", "-x", "true"],
            &["--tag=a", "true"],
            &["-tgpu", "true"],
            &["-t", "a", "--docker", "img", "true"],
            &["-t", "a", "--timeout", "soon", "true"],
            &["-t", "a", "--", "true"],
            &["--json", "--json", "-t", "a", "true"],
            &["-t", "a", "-i"],
        ];
        for args in for_clap {
            assert!(Cli::common_run(&argv(args)).is_none(), "{args:?} is for clap to read");
        }
    }

    #[test]
    fn the_names_taken_for_subcommands_are_clap_s_own() {
        let cli = <Cli as clap::CommandFactory>::command();
        let mut names: Vec<&str> =
            cli.get_subcommands().flat_map(|c| std::iter::once(c.get_name()).chain(c.get_all_aliases())).collect();
        names.push("help"); // clap's own, added as the command is built
        names.sort_unstable();
        let mut ours = SUBCOMMANDS.to_vec();
        ours.sort_unstable();
        assert_eq!(ours, names);
    }

    #[test]
    fn the_version_is_printed_as_clap_prints_it() {
        let mut cli = <Cli as clap::CommandFactory>::command();
        cli.build();
        assert_eq!(version(), cli.render_version());
        assert!(asks_version(&argv(&["--version"])) && asks_version(&argv(&["-V"])));
        assert!(!asks_version(&argv(&["-t", "x", "--version"])));
    }

    #[test]
    fn a_terminal_size_is_rows_by_columns_within_bounds() {
        let size = terminal_size("24x80").unwrap();
        assert_eq!((size.rows, size.cols), (24, 80));
        assert!(terminal_size("80").unwrap_err().contains("ROWSxCOLS"));
        assert!(terminal_size("0x80").unwrap_err().contains("rows must be 1 to 500"));
        assert!(terminal_size("24x2000").unwrap_err().contains("columns must be 1 to 1000"));
    }

    fn run(args: &[&str]) -> RunRequest {
        match action(args) {
            Ok(Action::Call { request: Request::Run(r), .. }) => r,
            Ok(_) => panic!("{args:?} is not a run"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn the_run_form_keeps_the_command_words_and_their_flags() {
        let r = run(&["-t", "gpu", "ls", "-la", "--json"]);
        assert_eq!(r.target, Target::Tag("gpu".into()));
        assert_eq!(r.command, ["ls", "-la", "--json"], "flags after the command belong to it");
        assert_eq!(r.isolation, Isolation::Native);
        assert_eq!((r.session, r.timeout_secs), (None, None));
        let r = run(&["-n", "box-1", "-s", "build", "--timeout", "5m", "make"]);
        assert_eq!(r.target, Target::Node("box-1".into()));
        assert_eq!((r.session.as_deref(), r.timeout_secs), (Some("build"), Some(Seconds::from_secs(300))));
        let r = run(&["-t", "gpu", "--timeout", "1m30s", "make"]);
        assert_eq!(r.timeout_secs, Some(Seconds::from_secs(90)));
        let r = run(&["-t", "gpu", "--timeout", "500ms", "make"]);
        assert_eq!(r.timeout_secs, Some(Seconds(std::time::Duration::from_millis(500))));
    }

    #[test]
    fn isolation_flags_become_one_typed_value() {
        let r =
            run(&["-t", "t", "--docker", "img:1", "--cpus", "2", "--network", "none", "--mount", "/a:/b:ro", "true"]);
        assert_eq!(r.isolation.to_string(), "docker:img:1;cpus=2;network=none;mount=/a:/b:ro");
        assert_eq!(run(&["-t", "t", "--nspawn", "/srv/tree", "true"]).isolation.kind(), "nspawn");
        assert_eq!(run(&["-t", "t", "--isolate", "native", "true"]).isolation, Isolation::Native);
    }

    #[test]
    fn bad_run_forms_are_refused_with_what_to_do() {
        let refused = |args: &[&str], needle: &str| match action(args) {
            Err(e) => assert!(e.contains(needle), "{args:?}: {e}"),
            Ok(_) => panic!("{args:?} was accepted"),
        };
        refused(&["ls"], "say where: -t TAG or -n NODE");
        refused(&["-t", "t"], "no command given");
        refused(&["-t", "a;b", "true"], "may hold only");
        refused(&["-t", "t", "--timeout", "0", "true"], "must be more than 0");
        refused(&["-t", "t", "--docker", "x;cpus=1", "true"], "';' is not allowed");
        refused(&["-t", "t", "--isolate", "chroot:/x", "true"], "");
        refused(&["-t", "t", "-n", "n", "true"], "cannot be used with");
    }

    #[test]
    fn global_flags_may_come_before_a_subcommand() {
        match action(&["--json", "--no-daemon", "nodes", "-t", "gpu"]) {
            Ok(Action::Call { request: Request::Nodes { tag }, json: true, no_daemon: true, .. }) => {
                assert_eq!(tag.as_deref(), Some("gpu"));
            }
            _ => panic!("not understood"),
        }
        assert!(matches!(action(&["daemon", "stop", "--json"]), Ok(Action::StopDaemon { json: true })));
        assert!(matches!(action(&["agent", "--help"]), Ok(Action::Exec("openbox-agent", a)) if a == ["--help"]));
    }

    #[test]
    fn the_context_flag_is_global_and_its_name_is_checked() {
        let context = |args: &[&str]| {
            let argv = std::iter::once("openbox").chain(args.iter().copied()).map(OsString::from).collect();
            Cli::try_from_argv(argv).map(|c| c.context.map(|c| c.name().to_owned())).map_err(|e| e.to_string())
        };
        for args in [
            &["--context", "work", "nodes"][..],
            &["--context=work", "nodes"],
            &["--json", "--context", "work", "nodes"],
            &["nodes", "--context", "work"],
            &["--context", "work", "-n", "box", "true"],
        ] {
            assert_eq!(context(args), Ok(Some("work".to_owned())), "{args:?}");
        }
        assert_eq!(context(&["--context", "default", "nodes"]), Ok(Some("default".to_owned())));
        assert_eq!(context(&["-n", "box", "echo", "--context", "work"]), Ok(None), "the command's own words");
        for bad in [&["--context", "Work", "nodes"][..], &["nodes", "--context", "a/b"], &["--context=-x", "nodes"]] {
            assert!(context(bad).is_err_and(|e| e.contains("is not a context name")), "{bad:?}");
        }
        match action(&["--context", "work", "nodes"]) {
            Ok(Action::Call { request: Request::Nodes { tag: None }, .. }) => {}
            _ => panic!("a leading --context is not the run form"),
        }
        assert!(matches!(
            action(&["context", "use", "work", "--json"]),
            Ok(Action::Context { command: ContextCommand::Use { name }, json: true }) if name.name() == "work"
        ));
        assert!(action(&["context", "rm", "Bad"]).is_err_and(|e| e.contains("is not a context name")));
    }

    #[test]
    fn daemon_run_hands_its_tailnet_flags_to_openboxd_and_only_run_takes_them() {
        let expected = ["--mesh-control", "http://127.0.0.1:8080", "--mesh-authkey-file", "/k", "--mesh"];
        let got = action(&[
            "daemon",
            "run",
            "--mesh-control",
            "http://127.0.0.1:8080",
            "--mesh-authkey-file",
            "/k",
            "--mesh",
        ]);
        assert!(matches!(got, Ok(Action::Exec("openboxd", a)) if a == expected));
        assert!(matches!(action(&["daemon", "--mesh"]), Ok(Action::Exec("openboxd", a)) if a == ["--mesh"]));
        assert!(matches!(action(&["daemon", "run"]), Ok(Action::Exec("openboxd", a)) if a.is_empty()));
        assert!(matches!(action(&["daemon", "status", "--mesh"]), Err(e) if e.contains("daemon run")));
    }

    #[test]
    fn node_tag_takes_plus_and_minus_and_a_trailing_json() {
        match action(&["node", "tag", "web1", "+gpu", "-old", "--json"]) {
            Ok(Action::Call { request: Request::NodeTag { node, add, remove }, json: true, .. }) => {
                assert_eq!((node.as_str(), add, remove), ("web1", vec!["gpu".to_owned()], vec!["old".to_owned()]));
            }
            _ => panic!("not understood"),
        }
        assert!(action(&["node", "tag", "web1", "gpu"]).is_err_and(|e| e.contains("+TAG")));
    }

    #[test]
    fn a_mistyped_command_or_flag_gets_the_nearest_one_and_a_far_one_none() {
        let err = |args: &[&str]| action(args).err().unwrap_or_default();
        assert!(err(&["nods"]).contains("did you mean `openbox nodes`?"), "{}", err(&["nods"]));
        assert!(err(&["sesion", "ls"]).contains("did you mean `openbox session`?"));
        assert!(err(&["--tiemout", "5", "true"]).contains("did you mean `openbox --timeout`?"));
        assert!(!err(&["ps"]).contains("did you mean"));
        let far = err(&["make", "build"]);
        assert!(!far.contains("did you mean") && far.contains("-t TAG or -n NODE"), "{far}");
    }

    #[test]
    fn up_takes_only_a_loopback_address() {
        for addr in ["127.0.0.1:7683", "[::1]:7683"] {
            let got = action(&["up", "--addr", addr]);
            assert!(
                matches!(got, Ok(Action::Call { request: Request::Up(r), .. }) if r.control_addr.as_deref() == Some(addr))
            );
        }
        let remembered = action(&["up"]);
        assert!(matches!(remembered, Ok(Action::Call { request: Request::Up(r), .. }) if r.control_addr.is_none()));
        let refused = action(&["up", "--addr", "0.0.0.0:7683"]);
        assert!(refused.is_err_and(|e| e.contains("openbox service install control -- --addr 0.0.0.0:7683")));
        assert!(action(&["up", "--addr", "localhost"]).is_err_and(|e| e.contains("expected IP:PORT")));
    }
}
