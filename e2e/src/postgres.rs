//! The test PostgreSQL cluster (`scripts/test-postgres`) and databases of each test's own.

use crate::*;

/// The test PostgreSQL server (`scripts/test-postgres`, started once per test process; a
/// machine without PostgreSQL fails these tests): `postgres://USER@HOST:PORT`.
pub fn postgres_server() -> &'static str {
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| postgres_cluster(&[]))
}

/// Starts (or finds) a PostgreSQL cluster with `scripts/test-postgres` and these variables
/// (`OPENBOX_TEST_POSTGRES_DIR`, `…_PORT` for one of a test's own); its server URL.
pub fn postgres_cluster(env: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres");
    let out = Command::new(&script).envs(env.iter().copied()).output().expect("run scripts/test-postgres");
    assert!(
        out.status.success(),
        "scripts/test-postgres failed (these tests need PostgreSQL; scripts/setup-test-env installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix("OPENBOX_TEST_POSTGRES="))
        .unwrap_or_else(|| panic!("scripts/test-postgres printed no OPENBOX_TEST_POSTGRES:\n{text}"))
        .to_owned()
}

/// Runs SQL on a PostgreSQL database with psql; its output, one row a line.
pub fn psql(url: &str, sql: &str) -> String {
    let out =
        Command::new("psql").args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).output().expect("psql");
    assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A new, empty database on `server`: its URL.
pub fn postgres_database(server: &str) -> String {
    let name = format!("e2e_{}", &trust::token::random_id()[..12]);
    psql(&format!("{server}/postgres"), &format!("CREATE DATABASE {name}"));
    format!("{server}/{name}")
}
