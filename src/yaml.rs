//! YAML loading shared by `pgveil.yaml` and the policy: `${ENV}` expansion,
//! errors that carry `file:line` and a fix, and a locator that maps a key
//! path back to its line for errors found after parsing.
//!
//! We use `serde_yaml_ng`, a maintained fork of `serde_yaml`, because its
//! errors carry line/column and `#[serde(deny_unknown_fields)]` turns typos
//! into errors with a position.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer};

/// An error a user must fix in a YAML file: where, what, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for YamlError {}

/// Several problems at once, so a user fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlErrors(pub Vec<YamlError>);

impl fmt::Display for YamlErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for YamlErrors {}

impl From<YamlError> for YamlErrors {
    fn from(e: YamlError) -> Self {
        YamlErrors(vec![e])
    }
}

/// Read and deserialize a YAML file, mapping parse errors to `file:line`.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, String), YamlError> {
    let text = std::fs::read_to_string(path).map_err(|e| YamlError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read file: {e}"),
    })?;
    let value = from_str(path, &text)?;
    Ok((value, text))
}

/// [`load`], reporting every problem at once (see [`from_str_all`]).
pub fn load_all<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, String), YamlErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| YamlError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read file: {e}"),
    })?;
    let value = from_str_all(path, &text)?;
    Ok((value, text))
}

/// Deserialize YAML text that came from `path`.
pub fn from_str<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, YamlError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        // serde_yaml_ng prefixes messages with a key path and position; keep
        // the message readable and put the line in our own prefix.
        let mut message = e.to_string();
        if let Some(idx) = message.find(" at line ") {
            message.truncate(idx);
        }
        YamlError {
            file: path.to_path_buf(),
            line,
            message: hint(&message),
        }
    })
}

/// Deserialize YAML text that came from `path`, reporting every problem
/// serde finds rather than the first, so a user fixes the file in one
/// pass. After each error the line it points at is set aside and the text
/// read again: an unknown key (and what is nested under it) is removed; a
/// value of the wrong type or an unknown variant is replaced by one of the
/// expected kind, so a required key stays present; anything else is
/// removed. Line numbers stay those of the file. A file that is not YAML at
/// all gets its one syntax error; a `missing field` or a repeated message
/// that only setting a line aside caused ends the search unreported.
pub fn from_str_all<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &str,
) -> Result<T, YamlErrors> {
    let first = match from_str(path, text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).is_err() {
        return Err(first.into());
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut errors = vec![first];
    while errors.len() < 50 {
        let last = errors.last().expect("an error");
        let Some(at) = last.line.map(|l| l - 1).filter(|&i| i < lines.len()) else {
            break;
        };
        if lines[at].trim().is_empty() {
            break;
        }
        set_aside(&mut lines, at, &last.message);
        match from_str::<T>(path, &lines.join("\n")) {
            Ok(_) => break,
            Err(e) => {
                if e.message.contains("missing field")
                    || errors
                        .iter()
                        .any(|x| x.line == e.line || x.message == e.message)
                {
                    break;
                }
                errors.push(e);
            }
        }
    }
    Err(YamlErrors(errors))
}

/// Put line `at` out of the way of the next read (see [`from_str_all`]).
fn set_aside(lines: &mut [String], at: usize, message: &str) {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let line = lines[at].clone();
    let expected = message.split("expected ").nth(1).unwrap_or("");
    let placeholder = if message.contains("unknown field") {
        None
    } else if message.contains("unknown variant") {
        expected.split('`').nth(1).map(str::to_string)
    } else if message.contains("invalid type") {
        let kind = expected.trim_start_matches("a ").trim_start_matches("an ");
        match kind.split([' ', ',']).next().unwrap_or("") {
            k if k.starts_with('u') || k.starts_with('i') || k.starts_with('f') => {
                Some("0".to_string())
            }
            "bool" | "boolean" => Some("false".to_string()),
            "string" => Some("x".to_string()),
            "sequence" => Some("[]".to_string()),
            "map" | "struct" => Some("{}".to_string()),
            _ => None,
        }
    } else {
        None
    };
    let value_at = line
        .find(": ")
        .filter(|_| !line.trim_start().starts_with('{'));
    match (placeholder, value_at) {
        (Some(v), Some(i)) => {
            lines[at] = format!("{}: {v}", &line[..i]);
        }
        _ => {
            let own = indent(&line);
            lines[at].clear();
            for l in lines.iter_mut().skip(at + 1) {
                if l.trim().is_empty() || l.trim_start().starts_with('#') {
                    continue;
                }
                if indent(l) <= own {
                    break;
                }
                l.clear();
            }
        }
    }
}

/// Add the usual fix to serde's terse messages, with the closest allowed
/// name for a typo (serde writes ``unknown field `lisen`, expected one of
/// `listen`, …``).
fn hint(message: &str) -> String {
    let names: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let did_you_mean = match names.split_first() {
        Some((typo, allowed)) => suggest(typo, allowed)
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default(),
        None => String::new(),
    };
    if message.contains("unknown field") {
        format!("{message} ({did_you_mean}remove it or fix its spelling)")
    } else if message.contains("unknown variant") {
        format!("{message} ({did_you_mean}use one of the expected values)")
    } else if message.contains("duplicate") {
        format!("{message} (each key may appear once: merge the two entries)")
    } else {
        message.to_string()
    }
}

/// Find the 1-based line of a key path such as `["keys", "keystore", "database"]`
/// in block-style YAML (the style of the reference files). Flow mappings
/// (`{ a: 1 }`) resolve to the line of their parent key. Returns the deepest
/// line found, so an error always points somewhere useful.
pub fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let mut best = None;
    let mut want = 0usize; // index into path
    let mut parent_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        if want >= path.len() {
            break;
        }
        let line = strip_comment(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some(p) = parent_indent
            && indent <= p
        {
            // Left the parent's block without finding the key.
            break;
        }
        let key = trimmed.trim_start_matches("- ");
        let Some((k, rest)) = key.split_once(':') else {
            continue;
        };
        let k = k.trim().trim_matches('"').trim_matches('\'');
        if k == path[want] {
            best = Some(i + 1);
            want += 1;
            parent_indent = Some(indent);
            // `key: { a: 1, b: 2 }`: look inside the flow mapping on this line.
            let rest = rest.trim();
            if rest.starts_with('{') && want < path.len() {
                let needle = format!("{}:", path[want]);
                if rest.contains(&needle) {
                    want += 1;
                }
            }
        }
    }
    best
}

fn strip_comment(line: &str) -> &str {
    // A '#' starts a comment when it begins the line or follows whitespace
    // and is not inside quotes.
    let bytes = line.as_bytes();
    let (mut sq, mut dq) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !dq => sq = !sq,
            b'"' if !sq => dq = !dq,
            b'#' if !sq && !dq && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return &line[..i];
            }
            _ => {}
        }
    }
    line
}

/// Expand `${VAR}` and `${VAR:-default}` in a string. An unset variable
/// without a default is an error naming the variable.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in {s:?}: close it with `}}`"));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{inner}}}` is not a valid environment variable reference"
            ));
        }
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => match default {
                Some(d) => out.push_str(d),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set: export it, or write ${{{name}:-default}}"
                    ));
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A string that may contain `${ENV}` references, expanded while the file is
/// deserialized so that an unset variable is reported with its line.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EnvString(pub String);

impl EnvString {
    /// The expanded string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(EnvString).map_err(de::Error::custom)
    }
}

/// An [`EnvString`] whose unset `${VAR}` is kept as a value (the message
/// saying which), for settings that are optional in some modes.
#[derive(Debug, Clone)]
pub enum MaybeEnvString {
    Set(EnvString),
    Unset(String),
}

impl<'de> Deserialize<'de> for MaybeEnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(match expand_env(&raw) {
            Ok(v) => MaybeEnvString::Set(EnvString(v)),
            Err(why) => MaybeEnvString::Unset(why),
        })
    }
}

/// A duration written like `300s`, `5m`, `1h 30m` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = EnvString::deserialize(d)?;
        humantime::parse_duration(raw.as_str())
            .map(HumanDuration)
            .map_err(|e| de::Error::custom(format!("{e}: write a duration such as 300s or 5m")))
    }
}

/// The allowed name closest to a typo (edit distance ≤ 2).
pub(crate) fn suggest<'a>(k: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(k, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_keys() {
        let text = "a: 1\nkeys:\n  local:\n    x: 1\n  keystore:\n    database: u\nz: 2\n";
        assert_eq!(locate(text, &["keys", "keystore", "database"]), Some(6));
        assert_eq!(locate(text, &["keys", "keystore"]), Some(5));
        assert_eq!(locate(text, &["z"]), Some(7));
        // Missing leaf: deepest parent.
        assert_eq!(locate(text, &["keys", "nope"]), Some(2));
    }

    #[test]
    fn locate_flow_mapping_resolves_to_parent_line() {
        let text = "tables:\n  t:\n    columns:\n      name: { type: text, access: { a: read } }\n";
        assert_eq!(
            locate(text, &["tables", "t", "columns", "name", "type"]),
            Some(4)
        );
    }

    #[test]
    fn env_expansion() {
        // SAFETY: tests in this module do not read these variables concurrently.
        unsafe { std::env::set_var("PGVEIL_TEST_X", "v") };
        assert_eq!(expand_env("a${PGVEIL_TEST_X}b").unwrap(), "avb");
        assert_eq!(expand_env("${PGVEIL_TEST_UNSET_Y:-d}").unwrap(), "d");
        let e = expand_env("${PGVEIL_TEST_UNSET_Y}").unwrap_err();
        assert!(e.contains("PGVEIL_TEST_UNSET_Y"), "{e}");
        assert!(expand_env("${oops").is_err());
    }
}
