//! `pgveil policy check`: the pre-flight of everything `serve` needs, every
//! problem reported at once. The config and the policy are read (with
//! file:line); then the secrets `serve` would read (master keys, the
//! blind-index key) must be present; then, unless `--offline`, the keystore
//! must answer and the master key provider must name its current key (a
//! KMS round trip for `aws-kms`); with `--database`, the schema must match
//! the policy. Output is text, or one JSON object with `--json`.

use crate::config::Config;
use crate::policy::Policy;

/// What `policy check` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Each check that passed, in order (`"policy"`, `"secrets"`, ...).
    pub passed: Vec<String>,
    /// Every problem, with file:line where there is one, and the fix.
    pub problems: Vec<String>,
}

impl Report {
    fn check(&mut self, what: &str, problems: Vec<String>) {
        if problems.is_empty() {
            self.passed.push(what.to_string());
        } else {
            self.problems.extend(problems);
        }
    }
}

/// Run every check for `cfg` and its loaded `policy` (`policy_text` is the
/// file's text, for the schema check's line numbers).
pub async fn run(
    cfg: &Config,
    policy: &Policy,
    policy_text: &str,
    database: Option<&str>,
    offline: bool,
) -> Report {
    let mut r = Report {
        passed: vec!["config".into(), "policy".into()],
        problems: vec![],
    };
    // Secrets: building the key manager reads every master key (or the KMS
    // settings) and names the keystore; the blind-index key is read when a
    // column has a blind index.
    let text = std::fs::read_to_string(&cfg.path).unwrap_or_default();
    let at = |path: &[&str]| match crate::yaml::locate(&text, path) {
        Some(l) => format!("{}:{l}: ", cfg.path.display()),
        None => format!("{}: ", cfg.path.display()),
    };
    // Every local master key on its own (the key manager stops at the
    // first that fails), on the line of its list item.
    let mut secrets = vec![];
    if let Some(local) = cfg.keys.as_ref().and_then(|k| k.local.as_ref())
        && cfg
            .keys
            .as_ref()
            .is_some_and(|k| k.provider == crate::config::KeyProvider::Local)
    {
        let items = list_item_lines(&text, &["keys", "local", "master_keys"]);
        for (i, m) in local.master_keys.iter().enumerate() {
            let what = format!("master key {}", m.id);
            let r = crate::config::SecretRef {
                env: m.env.clone(),
                file: m.file.clone(),
            };
            let res = crate::keys::load_secret(&r, &cfg.base_dir, &what)
                .and_then(|s| crate::keys::check_key_hex(&s, &what));
            if let Err(e) = res {
                let place = match items.get(i) {
                    Some(l) => format!("{}:{l}: ", cfg.path.display()),
                    None => at(&["keys", "local", "master_keys"]),
                };
                secrets.push(format!("{place}{e}"));
            }
        }
    }
    let keys = match crate::ops::backfill::key_manager(cfg).await {
        Ok(k) => Some(k),
        Err(e) => {
            if secrets.is_empty() {
                secrets.push(format!("{}{e}", at(&["keys"])));
            }
            None
        }
    };
    let needs_bidx = policy
        .tables
        .iter()
        .any(|t| t.columns.iter().any(|c| c.blind_index.is_some()));
    if needs_bidx {
        match cfg.keys.as_ref().and_then(|k| k.blind_index_key.as_ref()) {
            None => secrets.push(format!(
                "{}keys.blind_index_key is missing and the policy has blind indexes: add `blind_index_key: {{ env: PGVEIL_BLIND_INDEX_KEY }}` (a 64-hex-digit secret; `pgveil keys generate` makes one)",
                at(&["keys"])
            )),
            Some(s) => {
                if let Err(e) = crate::keys::blind_index_root(s, &cfg.base_dir) {
                    secrets.push(format!("{}{e}", at(&["keys", "blind_index_key"])));
                }
            }
        }
    }
    r.check("secrets", secrets);
    if let Some(k) = &keys
        && !offline
    {
        let mut reach = vec![];
        if let Err(e) = k.keystore().check().await {
            reach.push(format!(
                "keystore: {e}: check keys.keystore.database and that the database accepts pgveil's connections (or pass --offline to skip the network checks)"
            ));
        }
        if let Err(e) = k.provider().current_master_key_id().await {
            reach.push(format!(
                "master key ({}): {e}: check the key id and the credentials (or pass --offline)",
                k.provider().kind()
            ));
        }
        r.check("keystore and master key", reach);
    }
    if let Some(url) = database {
        let found = match crate::ops::db::connect(url).await {
            Ok(client) => crate::policy::check::check_schema(policy, policy_text, &client)
                .await
                .iter()
                .map(|p| p.to_string())
                .collect(),
            Err(e) => vec![e],
        };
        r.check("schema", found);
    }
    r
}

/// The 1-based lines of the items (`- …`) of the YAML list at `path`.
fn list_item_lines(text: &str, path: &[&str]) -> Vec<usize> {
    let Some(start) = crate::yaml::locate(text, path) else {
        return vec![];
    };
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let Some(key_line) = lines.get(start - 1) else {
        return vec![];
    };
    let base = indent(key_line);
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate().skip(start) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent(l) <= base && !t.starts_with("- ") {
            break;
        }
        if t.starts_with("- ") || t == "-" {
            out.push(i + 1);
        }
    }
    out
}
