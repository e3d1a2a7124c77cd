//! `pgveil shred --tenant ID` (crypto-shredding) and `pgveil keys list`.

use std::time::SystemTime;

use crate::keys::{KeyManager, KeyRecord};

/// Whether `pgveil shred` asks before destroying keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Print what would become unreadable; change nothing.
    DryRun,
    /// Ask on the terminal (type the tenant id); refuse without one.
    Ask,
    /// `--yes`: no question.
    Yes,
}

/// `pgveil shred`: destroy every data key of `tenant`. Exit 1 if the
/// keystore has never held a key for it (a typo must not look like success).
/// Every spelling of the tenant id in the keystore is shredded: envelopes
/// written before tenant ids were canonicalised to the tenant column's type
/// use the id as the client wrote it (`042` for tenant 42). It first shows
/// what becomes unreadable; `Confirm` decides whether it then asks, goes
/// on, or stops there.
pub async fn shred(keys: &KeyManager, tenant: &str, confirm: Confirm) -> i32 {
    let before: Vec<KeyRecord> = match keys.list_keys(None).await {
        Ok(r) => r
            .into_iter()
            .filter(|r| {
                r.tenant
                    .as_deref()
                    .is_some_and(|t| crate::seal::same_tenant_spelling(t, tenant))
            })
            .collect(),
        Err(e) => {
            eprintln!("error: keystore: {e}");
            return 1;
        }
    };
    let spellings: std::collections::BTreeSet<String> =
        before.iter().filter_map(|r| r.tenant.clone()).collect();
    if before.is_empty() {
        eprintln!(
            "tenant {tenant:?} has no data keys in the keystore: check the id (it is the tenant column's value as text); `pgveil keys list` shows every tenant"
        );
        return 1;
    }
    let live: Vec<&KeyRecord> = before.iter().filter(|r| !r.destroyed).collect();
    let tables: std::collections::BTreeSet<&str> = live.iter().map(|r| r.table.as_str()).collect();
    println!(
        "tenant {tenant:?}: {} live data key version(s) of {} table(s) would be destroyed ({}); every value encrypted under them becomes unreadable for good, in the database, its replicas and its backups",
        live.len(),
        tables.len(),
        tables.iter().copied().collect::<Vec<_>>().join(", ")
    );
    match confirm {
        Confirm::DryRun => {
            println!("dry run: nothing changed");
            return 0;
        }
        Confirm::Yes => {}
        Confirm::Ask if live.is_empty() => {}
        Confirm::Ask => {
            use std::io::{BufRead, IsTerminal, Write};
            if !std::io::stdin().is_terminal() {
                eprintln!(
                    "refusing to shred without confirmation: run it on a terminal, or pass --yes (there is no undo; --dry-run shows what it would do)"
                );
                return 1;
            }
            print!("type the tenant id to confirm: ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            if line.trim_end_matches(['\n', '\r']) != tenant {
                eprintln!("not confirmed: nothing changed");
                return 1;
            }
        }
    }
    let mut total = Ok(0);
    for s in &spellings {
        match keys.shred_tenant(s).await {
            Ok(n) => total = total.map(|t| t + n),
            Err(e) => {
                total = Err(e);
                break;
            }
        }
    }
    match total {
        Ok(n) => {
            let tables: std::collections::BTreeSet<&str> =
                before.iter().map(|r| r.table.as_str()).collect();
            if n == 0 {
                println!(
                    "tenant {tenant:?}: already shredded (all {} key version(s) destroyed earlier)",
                    before.len()
                );
            } else {
                println!(
                    "tenant {tenant:?}: destroyed {n} data key version(s) ({}); its values are now unreadable everywhere, backups of the data included",
                    tables.into_iter().collect::<Vec<_>>().join(", ")
                );
                println!(
                    "running pgveil instances drop cached keys within keys.cache_ttl; the tenant's blind indexes remain: NULL them to remove equality leakage"
                );
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn state(r: &KeyRecord) -> &'static str {
    if r.destroyed {
        "destroyed"
    } else if r.retired {
        "retired"
    } else {
        "current"
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The table printed by `pgveil keys list`.
pub fn format_keys(recs: &[KeyRecord]) -> String {
    let mut rows = vec![[
        "KEY".to_string(),
        "VERSION".into(),
        "TABLE".into(),
        "TENANT".into(),
        "MASTER KEY".into(),
        "CREATED".into(),
        "STATE".into(),
        "ENCRYPTIONS".into(),
    ]];
    for r in recs {
        rows.push([
            r.key_id.to_string(),
            r.version.to_string(),
            r.table.clone(),
            r.tenant.clone().unwrap_or_else(|| "-".into()),
            if r.destroyed {
                "-".into()
            } else {
                r.master_key_id.clone()
            },
            time(r.created_at),
            state(r).into(),
            r.encryptions.to_string(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `pgveil keys list --json`: one array, an object per key version.
pub fn keys_json(recs: &[KeyRecord]) -> String {
    let rows: Vec<serde_json::Value> = recs
        .iter()
        .map(|r| {
            serde_json::json!({
                "key_id": r.key_id,
                "version": r.version,
                "table": r.table,
                "tenant": r.tenant,
                "master_key": if r.destroyed { None } else { Some(&r.master_key_id) },
                "created": time(r.created_at),
                "state": state(r),
                "encryptions": r.encryptions,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// `pgveil keys list`.
pub async fn list(keys: &KeyManager, tenant: Option<&str>, json: bool) -> i32 {
    match keys.list_keys(tenant).await {
        Ok(recs) if json => {
            println!("{}", keys_json(&recs));
            0
        }
        Ok(recs) if recs.is_empty() => {
            match tenant {
                Some(t) => println!("no data keys for tenant {t:?}"),
                None => println!("the keystore holds no data keys yet"),
            }
            0
        }
        Ok(recs) => {
            print!("{}", format_keys(&recs));
            0
        }
        Err(e) => {
            eprintln!("error: keystore: {e}");
            1
        }
    }
}
