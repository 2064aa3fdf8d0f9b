//! `openbox control migrate`: a fleet's registry copied from its SQLite file into an empty
//! PostgreSQL database, every row as it is (ids, token hashes, node secrets, the change
//! log), so that the same CA key, nodes and logins keep working against a control plane
//! started on the new database. The file may be in use: it is read in one transaction, a
//! consistent snapshot (stop the old control plane before starting the new one, so nothing
//! is written to the file after the copy).

use std::path::Path;

use tokio_postgres::types::{ToSql, Type};

use super::{Postgres, Result, Sqlite, StoreError};

/// Tables in an order that keeps references valid (users before what refers to them).
const TABLES: &[&str] = &[
    "users",
    "tokens",
    "nodes",
    "revoked_nodes",
    "sessions",
    "mesh",
    "audit",
    "revoked_users",
    "grants",
    "web_sessions",
    "web_links",
    "fleet_ca",
    "changes",
    "cert_cutoffs",
];

/// Rows copied, per table.
pub type Copied = Vec<(&'static str, u64)>;

pub async fn sqlite_to_postgres(from: &Path, to: &str) -> Result<Copied> {
    if !from.exists() {
        return Err(StoreError::NotFound(format!("{} does not exist", from.display())));
    }
    // Brings the file's schema up to date first (a running control plane already has).
    drop(Sqlite::open(from)?);
    let target = Postgres::connect(to).await?;
    let mut pg = target.client_for_copy().await?;
    let users: i64 = pg.query_one("SELECT count(*) FROM users", &[]).await?.get(0);
    let nodes: i64 = pg.query_one("SELECT count(*) FROM nodes", &[]).await?.get(0);
    if users > 0 || nodes > 0 {
        return Err(StoreError::Refused(format!(
            "{} already holds a fleet ({users} users, {nodes} nodes); migrate into an empty database",
            super::Database::redact(to)
        )));
    }
    let mut file = rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let snapshot = file.transaction()?;
    let tx = pg.transaction().await?;
    let mut copied = Vec::new();
    for table in TABLES {
        // The columns as PostgreSQL has them; SQLite has the same names.
        let columns: Vec<(String, Type)> = {
            let probe = tx.prepare(&format!("SELECT * FROM {table} LIMIT 0")).await?;
            probe.columns().iter().map(|c| (c.name().to_owned(), c.type_().clone())).collect()
        };
        let names: Vec<String> = columns.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                names.join(", "),
                marks.join(", ")
            ))
            .await?;
        let mut read = snapshot.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
        let mut rows = read.query([])?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(columns.len());
            for (i, (name, ty)) in columns.iter().enumerate() {
                values.push(
                    value(row, i, ty).map_err(|why| {
                        StoreError::Refused(format!("{table}.{name}: {why}; the file may be damaged"))
                    })?,
                );
            }
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            tx.execute(&insert, &params).await?;
            n += 1;
        }
        // Identity columns carry on after the rows copied.
        for (name, _) in columns.iter().filter(|(n, ty)| (n == "id" || n == "seq") && *ty == Type::INT8) {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{name}'), GREATEST((SELECT MAX({name}) FROM {table}), 1), \
                     (SELECT MAX({name}) FROM {table}) IS NOT NULL) WHERE pg_get_serial_sequence('{table}', '{name}') IS NOT NULL"
                ),
                &[],
            )
            .await?;
        }
        copied.push((*table, n));
    }
    tx.commit().await?;
    Ok(copied)
}

/// One SQLite value as the PostgreSQL column's type wants it.
fn value(row: &rusqlite::Row<'_>, i: usize, ty: &Type) -> std::result::Result<Box<dyn ToSql + Sync + Send>, String> {
    let err = |e: rusqlite::Error| e.to_string();
    Ok(match *ty {
        Type::INT8 => Box::new(row.get::<_, Option<i64>>(i).map_err(err)?),
        Type::INT4 => Box::new(row.get::<_, Option<i32>>(i).map_err(err)?),
        Type::BOOL => Box::new(row.get::<_, Option<bool>>(i).map_err(err)?),
        Type::TEXT => Box::new(row.get::<_, Option<String>>(i).map_err(err)?),
        ref other => return Err(format!("a column of type {other} this version cannot copy")),
    })
}
