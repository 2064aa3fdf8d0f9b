//! Every test runs on both backends: SQLite, and PostgreSQL on the test cluster
//! (`scripts/test-postgres`, or the server `OPENBOX_TEST_POSTGRES=postgres://USER@HOST:PORT`
//! names), each test in a database of its own.

use proto::api::{Grant, Platform, Target};

use super::*;

fn node(id: &str, name: &str) -> NodeRow {
    NodeRow {
        id: id.into(),
        name: name.into(),
        tags: vec!["a".into()],
        platform: Platform::this_machine(),
        addr: "127.0.0.1:1".into(),
        mesh_addr: None,
        host_key: "ssh-ed25519 AAAA".into(),
        secret_hash: "h".into(),
        last_seen: None,
        stopped: false,
        created_at: 1,
        capabilities: vec!["native".into()],
        shares_control: false,
        host_cert_expires: None,
        listed_online: false,
    }
}

/// The test PostgreSQL server: `OPENBOX_TEST_POSTGRES`, else the one
/// `scripts/test-postgres` starts (or finds running).
fn postgres_server() -> String {
    if let Ok(url) = std::env::var("OPENBOX_TEST_POSTGRES") {
        return url;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-postgres");
    let out = std::process::Command::new(script).output().expect("run scripts/test-postgres");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/test-postgres failed (the store's tests need PostgreSQL; scripts/setup-test-env installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("OPENBOX_TEST_POSTGRES="))
        .unwrap_or_else(|| panic!("scripts/test-postgres printed no OPENBOX_TEST_POSTGRES:\n{text}"))
        .to_owned()
}

/// A new, empty PostgreSQL database; its URL.
async fn postgres_database() -> String {
    let server = postgres_server();
    let server = server.trim_end_matches('/');
    let (admin, connection) = tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
    tokio::spawn(connection);
    let name = format!("store_test_{}", &trust::token::random_id()[..12]);
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{server}/{name}")
}

/// One store of each kind, each on an empty database; and how to open each again (a
/// second control plane on the same database).
async fn each_backend() -> Vec<(Store, Database, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Database::Sqlite(dir.path().join("openbox.db"));
    let postgres = Database::Postgres(postgres_database().await);
    let mut stores = Vec::new();
    for db in [sqlite, postgres] {
        stores.push((Store::open(&db).await.unwrap(), db, tempfile::tempdir().unwrap()));
    }
    drop(dir.keep());
    stores
}

#[tokio::test]
async fn grants_replace_each_other_and_go_with_their_node_or_user() {
    for (s, db, _) in each_backend().await {
        let bob = s.create_user("bob", false, "bob-hash", 1).await.unwrap();
        s.insert_node(node("n1", "box"), true).await.unwrap();
        let tag = |isolation: &[&str]| Grant {
            on: Target::Tag("ci".into()),
            isolation: isolation.iter().map(|k| k.to_string()).collect(),
        };
        s.put_grant("bob", &tag(&[]), 1).await.unwrap();
        assert!(s.cert_cutoffs(0).await.unwrap().is_empty(), "{db}: a new grant takes nothing back");
        let shown = s.put_grant("bob", &tag(&["docker"]), 2).await.unwrap();
        assert_eq!(shown, vec![tag(&["docker"])], "{db}: a second grant on the same tag replaces the first");
        let cut = s.cert_cutoffs(0).await.unwrap();
        assert_eq!(
            cut,
            [proto::api::CertCutoff { name: "bob".into(), incarnation: bob.incarnation.clone(), cutoff: 2 }],
            "{db}"
        );
        s.put_grant("bob", &tag(&["docker"]), 3).await.unwrap();
        assert_eq!(s.cert_cutoffs(0).await.unwrap()[0].cutoff, 2, "{db}: the same grant again takes nothing back");
        assert!(s.cert_cutoffs(3).await.unwrap().is_empty(), "{db}: only cut-offs since the time asked");
        let shown = s.put_grant("bob", &Grant { on: Target::Node("n1".into()), isolation: vec![] }, 3).await.unwrap();
        assert!(
            shown.contains(&Grant { on: Target::Node("box".into()), isolation: vec![] }),
            "{db}: by name: {shown:?}"
        );
        let held = s.grants(bob.id).await.unwrap();
        assert!(held.contains(&Grant { on: Target::Node("n1".into()), isolation: vec![] }), "{db}");
        s.remove_node("n1", 4).await.unwrap();
        assert_eq!(s.grants(bob.id).await.unwrap(), vec![tag(&["docker"])], "{db}: a removed node's grant goes");
        assert!(matches!(s.remove_grant("bob", &Target::Tag("gpu".into())).await, Err(StoreError::NotFound(_))));
        assert!(s.remove_grant("bob", &Target::Tag("ci".into())).await.unwrap().is_empty());
        assert!(s.cert_cutoffs(0).await.unwrap()[0].cutoff >= 1_700_000_000, "{db}: a grant taken back cuts off");
        s.put_grant("bob", &tag(&[]), 5).await.unwrap();
        s.remove_user("bob", 6).await.unwrap();
        let again = s.create_user("bob", false, "bob-hash-2", 7).await.unwrap();
        assert!(s.grants(again.id).await.unwrap().is_empty(), "{db}: a user added again starts with no grants");
        assert_ne!(again.incarnation, bob.incarnation, "{db}");
        let revoked = s.revoked_users(6).await.unwrap();
        assert!(revoked.iter().any(|r| r.incarnation == bob.incarnation), "{db}: {revoked:?}");
        assert!(matches!(s.put_grant("nobody", &tag(&[]), 8).await, Err(StoreError::NotFound(_))), "{db}");
        let users = s.list_users().await.unwrap();
        assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["bob"], "{db}");
    }
}

#[tokio::test]
async fn an_enrollment_token_is_taken_once_and_not_after_expiry() {
    for (s, db, _) in each_backend().await {
        let u = s.create_user("admin", true, "login-hash", 1).await.unwrap();
        s.add_enroll_token("e1", u.id, &["gpu".into()], 10, 100).await.unwrap();
        s.add_enroll_token("e2", u.id, &[], 10, 100).await.unwrap();
        assert_eq!(s.take_enroll_token("e1", 50).await.unwrap(), Ok(vec!["gpu".to_string()]), "{db}");
        assert_eq!(s.take_enroll_token("e1", 51).await.unwrap(), Err(EnrollTokenProblem::Used), "{db}");
        assert_eq!(s.take_enroll_token("e2", 100).await.unwrap(), Err(EnrollTokenProblem::Expired), "{db}");
        assert_eq!(s.take_enroll_token("nope", 1).await.unwrap(), Err(EnrollTokenProblem::Unknown), "{db}");
        s.add_enroll_token("e3", u.id, &["t".into()], 10, 100).await.unwrap();
        assert_eq!(s.check_enroll_token("e3", 50).await.unwrap(), Ok(vec!["t".to_string()]), "{db}");
        assert_eq!(s.check_enroll_token("e3", 50).await.unwrap(), Ok(vec!["t".to_string()]), "{db}: uses nothing");
        assert_eq!(s.check_enroll_token("e1", 50).await.unwrap(), Err(EnrollTokenProblem::Used), "{db}");
        let outstanding = s.outstanding_enroll_tokens(50).await.unwrap();
        assert_eq!(outstanding.len(), 2, "{db}: e2 and e3: {outstanding:?}");
        assert_eq!(outstanding[0].created_by, "admin", "{db}");
        s.remove_enroll_token(&outstanding[0].id).await.unwrap();
        assert!(matches!(s.remove_enroll_token(&outstanding[0].id).await, Err(StoreError::NotFound(_))), "{db}");
    }
}

#[tokio::test]
async fn an_enrollment_token_enrolls_once_however_many_control_planes_take_it_at_once() {
    for (s, db, _) in each_backend().await {
        let u = s.create_user("admin", true, "login-hash", 1).await.unwrap();
        for round in 0..20 {
            s.add_enroll_token(&format!("t{round}"), u.id, &[], 10, 1000).await.unwrap();
        }
        // Four control planes on one database, each trying every token at once.
        let mut planes = Vec::new();
        for _ in 0..4 {
            planes.push(std::sync::Arc::new(Store::open(&db).await.unwrap()));
        }
        for round in 0..20 {
            let attempts = planes.iter().map(|p| {
                let (p, hash) = (p.clone(), format!("t{round}"));
                tokio::spawn(async move { p.take_enroll_token(&hash, 50).await.unwrap() })
            });
            let mut won = 0;
            for attempt in attempts.collect::<Vec<_>>() {
                match attempt.await.unwrap() {
                    Ok(_) => won += 1,
                    Err(problem) => assert_eq!(problem, EnrollTokenProblem::Used, "{db}"),
                }
            }
            assert_eq!(won, 1, "{db}: token t{round} was taken {won} times");
        }
    }
}

#[tokio::test]
async fn default_node_names_get_a_suffix_but_explicit_ones_conflict() {
    for (s, db, _) in each_backend().await {
        s.insert_node(node("1", "box"), false).await.unwrap();
        assert_eq!(s.insert_node(node("2", "box"), false).await.unwrap().name, "box-2", "{db}");
        assert!(matches!(s.insert_node(node("3", "box"), true).await, Err(StoreError::Conflict(_))), "{db}");
        assert!(matches!(s.update_node("1", Some("box-2"), &[]).await, Err(StoreError::Conflict(_))), "{db}");
        s.update_node("1", Some("renamed"), &["x".into()]).await.unwrap();
        let n = s.node("renamed").await.unwrap().unwrap();
        assert_eq!((n.id.as_str(), n.tags), ("1", vec!["x".to_string()]), "{db}");
        assert_eq!(s.list_nodes().await.unwrap().len(), 2, "{db}");
        // A dispatch reads only the nodes its target names; tags are matched exactly.
        let mut odd = node("4", "odd");
        odd.tags = vec!["g_u%".into(), "X".into()];
        s.insert_node(odd, true).await.unwrap();
        let names = |rows: Vec<NodeRow>| rows.into_iter().map(|n| n.name).collect::<Vec<_>>();
        assert_eq!(names(s.nodes_for(&Target::Tag("g_u%".into())).await.unwrap()), ["odd"], "{db}");
        assert!(s.nodes_for(&Target::Tag("gxu%".into())).await.unwrap().is_empty(), "{db}: _ is no wildcard");
        assert_eq!(names(s.nodes_for(&Target::Tag("X".into())).await.unwrap()), ["odd"], "{db}: case counts");
        assert_eq!(names(s.nodes_for(&Target::Tag("a".into())).await.unwrap()), ["box-2"], "{db}");
        assert_eq!(names(s.nodes_for(&Target::Node("1".into())).await.unwrap()), ["renamed"], "{db}");
        assert_eq!(names(s.nodes_for(&Target::Node("odd".into())).await.unwrap()), ["odd"], "{db}");
    }
}

#[tokio::test]
async fn removing_a_node_revokes_it() {
    for (s, db, _) in each_backend().await {
        s.insert_node(node("1", "box"), false).await.unwrap();
        s.remove_node("1", 5).await.unwrap();
        assert!(s.node("1").await.unwrap().is_none(), "{db}");
        assert!(s.is_revoked("1", &node("1", "box").secret_hash).await.unwrap(), "{db}: its own secret learns it");
        assert!(!s.is_revoked("1", "another-secret").await.unwrap(), "{db}: nobody else does");
        assert!(matches!(s.remove_node("1", 6).await, Err(StoreError::NotFound(_))), "{db}");
    }
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed() {
    for (s, db, _) in each_backend().await {
        s.create_user("admin", true, "h1", 1).await.unwrap();
        s.create_user("bob", false, "h2", 1).await.unwrap();
        assert!(matches!(s.create_user("bob", false, "h3", 1).await, Err(StoreError::Conflict(_))), "{db}");
        assert!(matches!(s.remove_user("admin", 5).await, Err(StoreError::Refused(_))), "{db}");
        s.remove_user("bob", 5).await.unwrap();
        assert!(s.user_by_login_token("h2").await.unwrap().is_none(), "{db}: a removed user's tokens go with it");
        assert_eq!(s.user_count().await.unwrap(), 1, "{db}");
    }
}

#[tokio::test]
async fn heartbeats_sessions_browser_sessions_and_the_audit_log_keep_what_they_are_given() {
    for (s, db, _) in each_backend().await {
        let u = s.create_user("admin", true, "h1", 1).await.unwrap();
        s.insert_node(node("n1", "box"), false).await.unwrap();
        let hb = heartbeat(&["native", "docker", "teleport"]);
        s.record_heartbeat(&hb, unchanged(&s, &hb).await, true, 42).await.unwrap();
        let n = s.node("n1").await.unwrap().unwrap();
        assert_eq!((n.addr.as_str(), n.last_seen, n.shares_control), ("127.0.0.1:9", Some(42), true), "{db}");
        assert_eq!(n.capabilities, ["native", "docker"], "{db}: kinds it cannot dispatch are not kept");

        let row = SessionRow {
            id: "build".into(),
            node_id: "n1".into(),
            isolation: "native".into(),
            created_at: 10,
            last_used: 10,
            state: "active".into(),
        };
        assert_eq!(s.put_session(u.id, &row).await.unwrap(), "n1", "{db}");
        let elsewhere = SessionRow { node_id: "n2".into(), last_used: 11, ..row.clone() };
        assert_eq!(s.put_session(u.id, &elsewhere).await.unwrap(), "n1", "{db}: placed once, where it went first");
        let report = proto::api::SessionReport {
            user: "admin".into(),
            id: "build".into(),
            state: "ended".into(),
            last_used: 30,
        };
        assert!(s.apply_session_reports("n1", std::slice::from_ref(&report)).await.unwrap(), "{db}");
        assert!(!s.apply_session_reports("n1", &[report]).await.unwrap(), "{db}: the same state again is no change");
        let held = s.session(u.id, "build").await.unwrap().unwrap();
        assert_eq!((held.state.as_str(), held.last_used), ("ended", 30), "{db}");
        assert_eq!(s.list_sessions(u.id).await.unwrap().len(), 1, "{db}");
        assert!(s.remove_session(u.id, "build").await.unwrap(), "{db}");
        assert!(!s.remove_session(u.id, "build").await.unwrap(), "{db}");

        s.add_web_session("w1", u.id, "secret-hash", 100, 200).await.unwrap();
        assert_eq!(s.web_session("w1", 150).await.unwrap().unwrap().secret_hash, "secret-hash", "{db}");
        assert!(s.web_session("w1", 200).await.unwrap().is_none(), "{db}: expired");
        s.add_web_link("l1", u.id, 100, 200).await.unwrap();
        assert_eq!(s.take_web_link("l1", 150).await.unwrap().unwrap().name, "admin", "{db}");
        assert!(s.take_web_link("l1", 150).await.unwrap().is_none(), "{db}: a link works once");

        for (at, user) in [(5, "admin"), (6, "bob"), (7, "admin")] {
            let e = proto::api::AuditEntry {
                at,
                user: user.into(),
                action: "dispatch".into(),
                node_id: Some("n1".into()),
                ..Default::default()
            };
            s.audit(&[e], 0).await.unwrap();
        }
        let mine = s.audit_log(Some("admin"), Some("box"), 0, 10).await.unwrap();
        assert_eq!(mine.iter().map(|e| e.at).collect::<Vec<_>>(), [5, 7], "{db}: oldest first, by node name");
        assert_eq!(s.audit_log(None, None, 6, 1).await.unwrap()[0].at, 7, "{db}: the newest within the limit");
        s.audit(&[proto::api::AuditEntry { at: 8, ..Default::default() }], 7).await.unwrap();
        assert_eq!(s.audit_log(None, None, 0, 10).await.unwrap().len(), 2, "{db}: older entries forgotten");
        // What a node reports is kept once, however often it is sent.
        let ran = proto::api::AuditEntry {
            at: 9,
            action: "exec".into(),
            record_id: Some("n1:r1".into()),
            duration_ms: Some(12),
            exit: Some("signal TERM".into()),
            ..Default::default()
        };
        s.audit(&[ran.clone(), ran.clone()], 7).await.unwrap();
        s.audit(std::slice::from_ref(&ran), 7).await.unwrap();
        let log = s.audit_log(None, None, 9, 10).await.unwrap();
        assert_eq!(log, [ran], "{db}");

        let mesh = proto::api::MeshSettings { control_url: "http://127.0.0.1:1".into(), auth_key: "k".into() };
        s.set_mesh(&mesh).await.unwrap();
        s.set_mesh(&proto::api::MeshSettings { auth_key: "k2".into(), ..mesh }).await.unwrap();
        assert_eq!(s.mesh().await.unwrap().unwrap().auth_key, "k2", "{db}");
    }
}

#[tokio::test]
async fn reopening_the_database_keeps_everything() {
    for (s, db, _) in each_backend().await {
        s.create_user("admin", true, "h1", 1).await.unwrap();
        s.insert_node(node("1", "box"), false).await.unwrap();
        drop(s);
        let s = Store::open(&db).await.unwrap();
        assert_eq!(s.user_by_login_token("h1").await.unwrap().unwrap().name, "admin", "{db}");
        assert_eq!(s.list_nodes().await.unwrap().len(), 1, "{db}");
    }
}

#[test]
fn db_names_a_file_or_a_postgres_url_and_nothing_else() {
    let parse = |s: &str| s.parse::<Database>();
    assert_eq!(parse("sqlite:/var/lib/o.db"), Ok(Database::Sqlite("/var/lib/o.db".into())));
    assert_eq!(parse("sqlite:///var/lib/o.db"), Ok(Database::Sqlite("/var/lib/o.db".into())));
    assert_eq!(parse("data/o.db"), Ok(Database::Sqlite("data/o.db".into())));
    let url = "postgres://openbox:secret@db.internal:5432/openbox";
    assert_eq!(parse(url), Ok(Database::Postgres(url.into())));
    assert_eq!(parse(url).unwrap().to_string(), "postgres://openbox:***@db.internal:5432/openbox");
    assert!(parse("postgresql://u@h/db").is_ok());
    let refused = parse("mysql://u@h/db").unwrap_err();
    assert!(refused.contains("mysql: is not a database"), "{refused}");
    assert!(parse("sqlite:").is_err());
    assert!(parse("").is_err());
    assert!(parse("postgres://u@h:notaport/db").is_err());
    let tls = parse("postgres://u@h/db?sslmode=require").unwrap_err();
    assert!(tls.contains("without TLS"), "{tls}");
}

/// The migrations each backend loads, and the files in `migrations/BACKEND/`.
fn migrations(backend: &str, loaded: &[(u32, &str)]) -> Vec<u32> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations").join(backend);
    let mut files: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            let number =
                name.split('-').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{name}: NNNN-what.sql"));
            (number, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), loaded.len(), "{backend}: every file in {} is loaded, once", dir.display());
    for ((number, text), (loaded_number, sql)) in files.iter().zip(loaded) {
        assert_eq!((number, text.as_str()), (loaded_number, *sql), "{backend}: migration {number}, in order");
    }
    let numbers: Vec<u32> = files.iter().map(|(n, _)| *n).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{backend}: no number skipped: {numbers:?}");
    numbers
}

#[test]
fn both_backends_have_every_migration_from_the_first_they_share() {
    let sqlite = migrations("sqlite", sqlite::MIGRATIONS);
    let postgres = migrations("postgres", postgres::MIGRATIONS);
    assert_eq!(sqlite.first(), Some(&1));
    // PostgreSQL's first migration is the schema as SQLite's had it at that number; from
    // there on, each change exists for both.
    let first = postgres[0];
    assert_eq!(sqlite.iter().filter(|n| **n >= first).collect::<Vec<_>>(), postgres.iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn the_change_log_numbers_changes_announces_a_silent_node_offline_once_and_forgets_old_ones() {
    for (s, db, _) in each_backend().await {
        assert_eq!(s.change_range().await.unwrap(), (0, 0), "{db}: nothing logged yet");
        let u = s.create_user("admin", true, "h", 1).await.unwrap();
        let mut seen = node("n1", "box");
        seen.last_seen = Some(100);
        s.insert_node(seen, true).await.unwrap();
        s.put_grant("admin", &Grant { on: Target::Tag("a".into()), isolation: vec![] }, 101).await.unwrap();
        let changes = s.changes_since(0, 100).await.unwrap();
        let kinds: Vec<&ChangeKind> = changes.iter().map(|c| &c.kind).collect();
        assert_eq!(kinds, [&ChangeKind::Node("n1".into()), &ChangeKind::Policy(u.id)], "{db}");
        assert!(changes.windows(2).all(|w| w[1].seq > w[0].seq), "{db}: numbered in order");
        let (first, last) = s.change_range().await.unwrap();
        assert_eq!((first, last), (changes[0].seq, changes[1].seq), "{db}");
        assert!(s.changes_since(last, 100).await.unwrap().is_empty(), "{db}: nothing after the newest");
        assert_eq!(s.changes_since(0, 1).await.unwrap().len(), 1, "{db}: at most the limit");

        // Silent since before the cut-off: announced offline once, whoever sweeps.
        assert!(s.mark_offline(200, 300).await.unwrap(), "{db}");
        assert!(!s.mark_offline(200, 301).await.unwrap(), "{db}: once");
        let newest = s.changes_since(last, 100).await.unwrap();
        assert_eq!(newest.iter().map(|c| &c.kind).collect::<Vec<_>>(), [&ChangeKind::Node("n1".into())], "{db}");

        // A heartbeat that changes what a list shows is logged; the same one again is not.
        let hb = heartbeat(&["native"]);
        assert!(
            s.record_heartbeat(&hb, unchanged(&s, &hb).await, false, 400).await.unwrap(),
            "{db}: back online, at a new address"
        );
        assert!(
            !s.record_heartbeat(&hb, unchanged(&s, &hb).await, false, 401).await.unwrap(),
            "{db}: nothing a list shows changed"
        );
        // However it is kept (PostgreSQL writes such beats together, at the next sweep), the
        // beat is seen at once here, and by every control plane once the sweep has run.
        assert_eq!(s.node("n1").await.unwrap().unwrap().last_seen, Some(401), "{db}");
        assert_eq!(s.list_nodes().await.unwrap()[0].last_seen, Some(401), "{db}");
        assert!(!s.mark_offline(401, 402).await.unwrap(), "{db}: a node that just beat is not silent");
        let replica = Store::open(&db).await.unwrap();
        assert_eq!(replica.node("n1").await.unwrap().unwrap().last_seen, Some(401), "{db}: written for all");
        // When its host certificate ends is shown, so a renewal is logged.
        let renewed = proto::api::Heartbeat { host_cert_valid_before: 9_000, ..hb.clone() };
        assert!(
            s.record_heartbeat(&renewed, unchanged(&s, &renewed).await, false, 402).await.unwrap(),
            "{db}: a renewal is shown"
        );
        assert_eq!(replica.node("n1").await.unwrap().unwrap().host_cert_expires, Some(9_000), "{db}");
        assert!(!s.record_heartbeat(&renewed, unchanged(&s, &renewed).await, false, 403).await.unwrap(), "{db}");

        s.remove_node("n1", 500).await.unwrap();
        let (_, newest) = s.change_range().await.unwrap();
        let removed = s.changes_since(newest - 1, 10).await.unwrap();
        assert_eq!(removed[0].kind, ChangeKind::NodeRemoved("n1".into()), "{db}");

        // Old changes are forgotten; the newest is kept, so numbering goes on from it.
        s.forget_changes(1_000).await.unwrap();
        let (first, last) = s.change_range().await.unwrap();
        assert_eq!((first, last), (newest, newest), "{db}: only the newest is kept");
    }
}

/// Whether `hb` changes nothing a list shows of node n1 as stored now, as the control
/// plane decides before recording it.
async fn unchanged(s: &Store, hb: &proto::api::Heartbeat) -> bool {
    s.node("n1").await.unwrap().unwrap().shows_same_after(hb, false)
}

/// Node n1's heartbeat from 127.0.0.1:9, offering `capabilities`.
fn heartbeat(capabilities: &[&str]) -> proto::api::Heartbeat {
    proto::api::Heartbeat {
        node_id: "n1".into(),
        addr: "127.0.0.1:9".into(),
        mesh_addr: None,
        platform: Platform::this_machine(),
        version: "1".into(),
        host_cert_valid_before: 0,
        stopping: false,
        sessions: Vec::new(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        host: None,
        executions: Vec::new(),
    }
}
