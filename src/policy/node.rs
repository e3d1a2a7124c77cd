//! A loose YAML tree that keeps every mapping entry, duplicates included
//! (serde_yaml_ng's own `Value` would keep only one), so the validator can
//! report duplicate tables, columns and keys.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A YAML value as read, before validation (duplicate keys kept).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    /// Any scalar, in its textual form (`1`, `true`, `text`).
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in file order, duplicates kept.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// What kind of value this is, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "nothing",
            Node::Scalar(_) => "a single value",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = vec![];
        while let Some(n) = seq.next_element::<Node>()? {
            out.push(n);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = vec![];
        while let Some(k) = map.next_key::<Node>()? {
            let key = match k {
                Node::Scalar(s) => s,
                Node::Null => "null".to_string(),
                _ => return Err(de::Error::custom("mapping keys must be plain names")),
            };
            let v = map.next_value::<Node>()?;
            out.push((key, v));
        }
        Ok(Node::Map(out))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// The line of the `n`th (1-based) occurrence of the last key of `path`
/// inside its parent's block (used for duplicate keys, where
/// [`crate::yaml::locate`] finds the first). Flow mappings resolve to the
/// parent's line.
pub(crate) fn locate_nth(text: &str, path: &[&str], n: usize) -> Option<usize> {
    let (last, parent) = path.split_last()?;
    let lines: Vec<&str> = text.lines().collect();
    let (start, parent_indent) = if parent.is_empty() {
        (0, None)
    } else {
        let pl = crate::yaml::locate(text, parent)?;
        let raw = lines.get(pl - 1)?;
        let indent = raw.len() - raw.trim_start().len();
        // `parent: { … }` on one line: the duplicate is on that line.
        if let Some((_, rest)) = raw.split_once(':')
            && rest.trim_start().starts_with('{')
        {
            return Some(pl);
        }
        (pl, Some(indent))
    };
    let mut count = 0;
    let mut child_indent = None;
    for (i, raw) in lines.iter().enumerate().skip(start) {
        let t = raw.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = raw.len() - t.len();
        if let Some(p) = parent_indent
            && indent <= p
        {
            break;
        }
        let ci = *child_indent.get_or_insert(indent);
        if indent != ci {
            continue;
        }
        if let Some((k, _)) = t.split_once(':') {
            let k = k.trim().trim_matches('"').trim_matches('\'');
            if k == *last {
                count += 1;
                if count == n {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}
