//! The access policy: users other than admins run only where a grant lets them, with the
//! isolation it names; a node that could read the control plane's files takes a grant by
//! name.

use openbox_e2e::{Agent, Cli, ControlPlane, free_port, wait_until};

fn names(nodes: &[serde_json::Value]) -> Vec<&str> {
    nodes.iter().map(|n| n["name"].as_str().unwrap()).collect()
}

#[test]
fn a_user_runs_only_where_a_grant_lets_them_and_only_with_its_isolation() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let listed = admin.run(&["nodes"]).ok();
    assert!(listed.stdout.contains("No nodes yet. Add one: `openbox node token --tag TAG`"), "{listed:?}");
    let ci = Agent::enroll_elsewhere(&cp, &admin, &["ci"]);
    let gpu = Agent::enroll_elsewhere(&cp, &admin, &["gpu"]);
    assert_eq!(admin.node(&ci.node_id).unwrap()["shares_control"], false, "another machine's node");
    let bob = admin.add_user(&cp, "bob");

    // Nothing granted: nothing seen, nothing run, and told whom to ask for what.
    assert!(bob.nodes().is_empty());
    let listed = bob.run(&["nodes"]).ok();
    assert!(listed.stdout.contains("an admin grants them to you (`openbox user grant`)"), "{listed:?}");
    bob.run(&["-n", &ci.name, "true"]).fails_with(255, "an admin can allow it with `openbox user grant bob");
    bob.run(&["-t", "ci", "true"]).fails_with(255, "no node \"bob\" may use matches");

    let granted = admin.run(&["user", "grant", "bob", "--tag", "ci"]).ok();
    assert!(granted.stdout.contains("bob may now run on tag:ci"), "{granted:?}");
    wait_until("bob's node list to show the granted node", || names(&bob.nodes()) == [ci.name.as_str()]);
    assert_eq!(
        bob.run(&["-t", "ci", "echo $OPENBOX_USER on $OPENBOX_NODE"]).ok().stdout,
        format!("bob on {}\n", ci.node_id)
    );
    let hidden = bob.run(&["-n", &gpu.name, "true"]).fails_with(255, "no node \"bob\" may use matches");
    assert!(!hidden.stderr.contains(&gpu.name), "a node he may not see is not named: {hidden:?}");
    bob.run(&["-t", "ci", "-s", "work", "cd /tmp"]).ok();

    // Only Docker now: native is refused, and says what is allowed (his openboxd learns it
    // through its event stream, so even its warm connection is not used for native).
    admin.run(&["user", "grant", "bob", "--tag", "ci", "--isolation", "docker"]).ok();
    wait_until("bob's native calls to be refused", || bob.run(&["-t", "ci", "true"]).code == 255);
    bob.run(&["-t", "ci", "true"]).fails_with(255, "only with docker isolation, not native");
    let users = admin.run(&["user", "ls", "--json"]).ok().json();
    let bobs = users.as_array().unwrap().iter().find(|u| u["name"] == "bob").unwrap().clone();
    assert_eq!(bobs["grants"], serde_json::json!([{"on": {"tag": "ci"}, "isolation": ["docker"]}]));
    let text = admin.run(&["user", "ls"]).ok().stdout;
    assert!(text.contains("tag:ci (docker)"), "{text}");

    // Taken back: his session on that node is no longer his to use either.
    admin.run(&["user", "revoke", "bob", "--tag", "ci"]).ok();
    wait_until("bob's session call to be refused", || bob.run(&["-t", "ci", "-s", "work", "pwd"]).code == 255);
    bob.run(&["-t", "ci", "-s", "work", "pwd"]).fails_with(255, "no node \"bob\" may use matches");
    assert!(bob.nodes().is_empty());
    admin.run(&["user", "revoke", "bob", "--tag", "ci"]).fails_with(1, "has no grant on tag");
    admin.run(&["user", "grant", "bob", "--tag", "ci", "--isolation", "vm"]).fails_with(2, "not an isolation kind");
    admin.run(&["user", "grant", "bob"]).fails_with(2, "--tag");
    admin.run(&["user", "grant", "nobody", "--tag", "ci"]).fails_with(1, "no user named");
    bob.run(&["user", "grant", "bob", "--tag", "gpu"]).fails_with(1, "not an admin");

    // A grant by node reaches that node alone, whatever its tags; both are audited.
    admin.run(&["user", "grant", "bob", "--node", &gpu.name]).ok();
    bob.run(&["-t", "gpu", "true"]).ok();
    bob.run(&["-t", "ci", "true"]).fails_with(255, "no node \"bob\" may use matches");
    let log = admin.run(&["audit", "--json"]).ok().json();
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"user.grant") && actions.contains(&"user.revoke"), "{actions:?}");
}

/// The escalation a review found: with `openbox up` the control plane and the agent share
/// one user, so anyone who could run a command there could read the CA key and the
/// database, and make themselves admin.
#[test]
fn a_node_beside_the_control_plane_is_closed_to_tag_grants() {
    let me = Cli::new();
    let addr = format!("127.0.0.1:{}", free_port());
    me.run(&["up", "--addr", &addr]).ok();
    let local = me.nodes()[0].clone();
    assert_eq!(local["shares_control"], true, "{local}");
    let added = me.run(&["user", "add", "bob"]).ok();
    assert!(added.stdout.contains("beside the control plane"), "user add warns: {added:?}");
    let token = added.stdout.split_whitespace().find(|w| w.starts_with("obx_")).unwrap().to_owned();
    let bob = Cli::new();
    bob.run(&["login", "--server", &format!("http://{addr}"), "--token", &token]).ok();

    // A grant on the tag does not reach it.
    me.run(&["user", "grant", "bob", "--tag", "local"]).ok();
    let ca_key = me.home.path().join("control/ca_key");
    assert!(ca_key.exists(), "the CA key is where the test looks");
    let out = bob.run(&["-t", "local", "cat", ca_key.to_str().unwrap()]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("runs beside the control plane and could read its files"), "{out:?}");
    assert!(!out.stdout.contains("PRIVATE KEY"), "{out:?}");
    assert!(bob.nodes().is_empty());

    // An admin who means it grants the node by name.
    let name = local["name"].as_str().unwrap();
    me.run(&["user", "grant", "bob", "--node", name]).ok();
    assert_eq!(bob.run(&["-t", "local", "echo $OPENBOX_USER"]).ok().stdout, "bob\n");
    me.run(&["down"]).ok();
}

#[test]
fn a_root_agent_runs_each_users_commands_as_the_local_account_mapped_to_them() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.enroll_token(&["mapped"]);
    let agent = Agent::enroll_with(&cp, &token, &["--run-as", "bob=nobody", "--run-as", "admin=root"]);
    let bob = admin.add_user(&cp, "bob");
    let eve = admin.add_user(&cp, "eve");
    for user in ["bob", "eve"] {
        admin.run(&["user", "grant", user, "--node", &agent.name]).ok();
    }

    let nobody = "65534\n";
    assert_eq!(bob.run(&["-t", "mapped", "id -u; id -g"]).ok().stdout, format!("{nobody}{nobody}"));
    assert_eq!(bob.run(&["-t", "mapped", "echo $USER"]).ok().stdout, "nobody\n");
    // What root alone may read stays closed to him.
    let shadow = bob.run(&["-t", "mapped", "cat /etc/shadow"]);
    assert_eq!(shadow.code, 1, "{shadow:?}");
    assert!(shadow.stderr.contains("Permission denied"), "{shadow:?}");
    // A session's shell runs as the same account.
    assert_eq!(bob.run(&["-t", "mapped", "-s", "s1", "id -u"]).ok().stdout, nobody);
    // And reads the input made for it (the pipe is that account's, nobody else's).
    assert_eq!(bob.run_stdin(&["-t", "mapped", "-s", "s1", "cat"], b"mine\n").ok().stdout, "mine\n");
    assert_eq!(admin.run(&["-t", "mapped", "id -u"]).ok().stdout, "0\n");
    // Someone the mapping does not name runs nothing.
    eve.run(&["-t", "mapped", "true"]).fails_with(255, "names none for eve");

    // A mapping that cannot hold is refused at start.
    let out = Agent::run_to_end(&["--run-as", "bob=no-such-account", "--server", &cp.url]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no local account named \"no-such-account\""), "{out:?}");
}

/// A connection to `agent` authenticated with a certificate held outside openboxd, as a
/// client that keeps its certificate would hold it.
struct Held {
    rt: tokio::runtime::Runtime,
    target: net::ssh::NodeTarget,
    key: std::sync::Arc<trust::PrivateKey>,
    cert: trust::Certificate,
    conn: net::ssh::Connection,
}

impl Held {
    /// A certificate from a real dispatch for `token`'s user, and a connection made with it.
    fn dispatch(cp: &ControlPlane, token: &str, agent: &Agent, tag: &str) -> Held {
        let key = trust::generate_key();
        let request = proto::api::DispatchRequest {
            target: proto::api::Target::Tag(tag.into()),
            session: None,
            isolation: proto::Isolation::Native,
            public_key: key.public_key().to_openssh().unwrap(),
        };
        let answer =
            openbox_e2e::post_raw(&cp.addr, "/v1/dispatch", Some(token), &serde_json::to_string(&request).unwrap());
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let dispatch: proto::api::Dispatch = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        let cert = trust::parse_certificate(&dispatch.cert).unwrap();
        let target = net::ssh::NodeTarget {
            node_id: agent.node_id.clone(),
            name: agent.name.clone(),
            addr: agent.addr.clone(),
            via: net::transport::Transport::Tcp,
            ca: cp.ca().public_key().clone(),
        };
        let rt = openbox_e2e::runtime();
        let key = std::sync::Arc::new(key);
        let conn = rt.block_on(async {
            let mut conn = net::ssh::dial(&target).await.unwrap();
            conn.authenticate("bob", key.clone(), cert.clone()).await.unwrap();
            conn
        });
        Held { rt, target, key, cert, conn }
    }

    /// `echo ok` on the held connection.
    fn run_on_open_connection(&self) -> Result<String, net::ssh::SshError> {
        self.rt.block_on(async {
            let mut out = net::ssh::Writers { stdout: Vec::new(), stderr: Vec::new() };
            self.conn.exec("echo ok", net::ssh::NoInput, &mut out, std::future::pending()).await?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
    }

    /// `echo ok` on a new connection made with the same certificate.
    fn run_on_new_connection(&self) -> Result<String, net::ssh::SshError> {
        self.rt.block_on(async {
            let mut conn = net::ssh::dial(&self.target).await?;
            conn.authenticate("bob", self.key.clone(), self.cert.clone()).await?;
            let mut out = net::ssh::Writers { stdout: Vec::new(), stderr: Vec::new() };
            conn.exec("echo ok", net::ssh::NoInput, &mut out, std::future::pending()).await?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
    }
}

#[test]
fn a_grant_taken_back_stops_certificates_already_held_long_before_they_expire() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let ci = Agent::enroll_elsewhere(&cp, &admin, &["ci"]);
    let token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let bob = Cli::logged_in(&cp, &token);
    admin.run(&["user", "grant", "bob", "--tag", "ci"]).ok();
    admin.run(&["user", "grant", "bob", "--node", &ci.name]).ok();
    let held = Held::dispatch(&cp, &token, &ci, "ci");
    assert_eq!(held.run_on_open_connection().unwrap(), "ok\n");
    bob.run(&["-t", "ci", "true"]).ok(); // his openboxd holds one too, warm

    // The tag grant goes (the node grant stays): what was issued before is refused — on
    // the open connection and on a new one — well within the certificate's five minutes.
    admin.run(&["user", "revoke", "bob", "--tag", "ci"]).ok();
    wait_until("the held certificate to be refused on its open connection", || held.run_on_open_connection().is_err());
    assert!(
        matches!(held.run_on_new_connection(), Err(net::ssh::SshError::AuthRejected { .. })),
        "a new connection with it must be refused"
    );
    assert!(ci.log().contains("refused a certificate issued before its user's access changed"), "{}", ci.log());
    // His honest openboxd asks for a new certificate, which the node grant still allows.
    assert_eq!(bob.run(&["-t", "ci", "echo still"]).ok().stdout, "still\n");

    // Narrowing a grant cuts off too: native is no longer his there.
    let held = Held::dispatch(&cp, &token, &ci, "ci");
    admin.run(&["user", "grant", "bob", "--node", &ci.name, "--isolation", "docker"]).ok();
    wait_until("the native certificate to be refused", || held.run_on_new_connection().is_err());
}
